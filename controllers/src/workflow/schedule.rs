//! A Workflow's cron schedule, read in its time zone: parsing (so `99 99 99 99 99` is a
//! condition, not a silent no-op) and the decision whether a run is due now.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {schedule:?} is not a valid cron expression: {reason}")]
    Invalid { schedule: String, reason: String },
    #[error("timeZone {0:?} is not a known IANA time zone")]
    UnknownTimeZone(String),
}

impl ScheduleError {
    pub fn reason(&self) -> &'static str {
        match self {
            ScheduleError::Invalid { .. } => "InvalidSchedule",
            ScheduleError::UnknownTimeZone(_) => "UnknownTimeZone",
        }
    }
}

/// What the scheduler does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Create the run for this scheduled time.
    Run(Timestamp),
    /// This scheduled time was missed by more than `startingDeadlineSeconds`: skip it.
    Missed(Timestamp),
    /// Nothing is due.
    Nothing,
}

impl Schedule {
    /// Parses five cron fields (minute hour day-of-month month day-of-week) or a macro such
    /// as `@daily`, read in `time_zone` (UTC when unset).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let invalid = |reason: String| ScheduleError::Invalid { schedule: schedule.to_string(), reason };
        if !schedule.starts_with('@') && schedule.split_whitespace().count() != 5 {
            return Err(invalid("it needs five fields: minute hour day-of-month month day-of-week".into()));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(schedule).map_err(|e| invalid(e.to_string()))?;
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))?,
        };
        // A pattern that matches no real date (30 February) is as useless as a bad one.
        let probe = Schedule { cron, zone };
        probe.next_after(Timestamp::UNIX_EPOCH).ok_or_else(|| invalid("it never matches a date".into()))?;
        Ok(probe)
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron.find_next_occurrence(&t.to_zoned(self.zone.clone()), false).ok().map(|z| z.timestamp())
    }

    /// The latest scheduled time at or before `t`.
    fn latest_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron.find_previous_occurrence(&t.to_zoned(self.zone.clone()), true).ok().map(|z| z.timestamp())
    }

    /// Whether a run is due at `now`, given the last scheduled time a run was created for
    /// (or when the Workflow was created). Only the latest missed time is run: a scheduler
    /// down for a day does not replay every tick.
    pub fn due(&self, since: Timestamp, now: Timestamp, starting_deadline_seconds: Option<i64>) -> Due {
        match self.latest_at_or_before(now) {
            Some(at) if at > since => match starting_deadline_seconds {
                Some(deadline) if now.as_second() - at.as_second() > deadline => Due::Missed(at),
                _ => Due::Run(at),
            },
            _ => Due::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for bad in ["99 99 99 99 99", "* * * *", "0 9 * * MON *", "0 9 31 2 *", "@sometimes", "*/0 * * * *"] {
            let e = Schedule::parse(bad, None).unwrap_err();
            assert_eq!(e.reason(), "InvalidSchedule", "{bad}: {e}");
        }
        assert_eq!(Schedule::parse("0 9 * * MON", Some("Mars/Olympus")).unwrap_err().reason(), "UnknownTimeZone");
    }

    #[test]
    fn schedules_are_read_in_their_time_zone() {
        let utc = Schedule::parse("0 9 * * MON", None).unwrap();
        assert_eq!(utc.next_after(at("2026-12-02T00:00:00Z")), Some(at("2026-12-07T09:00:00Z")));
        let berlin = Schedule::parse("0 9 * * MON", Some("Europe/Berlin")).unwrap();
        assert_eq!(berlin.next_after(at("2026-12-02T00:00:00Z")), Some(at("2026-12-07T08:00:00Z")));
        let summer = berlin.next_after(at("2026-07-01T00:00:00Z"));
        assert_eq!(summer, Some(at("2026-07-06T07:00:00Z")), "CEST is UTC+2");
        assert!(Schedule::parse("@daily", None).is_ok());
    }

    #[test]
    fn only_the_latest_missed_time_runs_and_a_deadline_skips_it() {
        let every_5 = Schedule::parse("*/5 * * * *", None).unwrap();
        let since = at("2026-12-02T10:00:00Z");
        assert_eq!(every_5.due(since, at("2026-12-02T10:04:59Z"), None), Due::Nothing);
        assert_eq!(every_5.due(since, at("2026-12-02T10:05:00Z"), None), Due::Run(at("2026-12-02T10:05:00Z")));
        assert_eq!(every_5.due(since, at("2026-12-02T10:17:00Z"), None), Due::Run(at("2026-12-02T10:15:00Z")));
        assert_eq!(every_5.due(since, at("2026-12-02T10:17:00Z"), Some(60)), Due::Missed(at("2026-12-02T10:15:00Z")));
        assert_eq!(every_5.due(since, at("2026-12-02T10:15:30Z"), Some(60)), Due::Run(at("2026-12-02T10:15:00Z")));
    }
}
