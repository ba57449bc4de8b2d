//! Durations as written in specs: `500ms`, `10s`, `5m`, `1h30m`.

use std::time::Duration;

/// Parses a duration; the CRD's CEL rule already restricts the syntax.
pub fn parse(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            let unit = match rest.chars().next()? {
                's' => Duration::from_secs(1),
                'm' => Duration::from_secs(60),
                'h' => Duration::from_secs(3600),
                _ => return None,
            };
            (unit, 1)
        };
        total += unit * u32::try_from(value).ok()?;
        rest = &rest[len..];
    }
    (!text.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_the_crd_allows() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        for bad in ["", "5", "m", "5d", "1.5s"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
