//! Which Tenant a database and its roles belong to. The operator writes the Tenant's uid as
//! the comment of every database and role it creates, so a new Tenant with an old name never
//! silently receives the data an earlier one left behind (`deletionPolicy: Retain`).

use super::DatabaseError;

/// The Tenant a reconcile acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The Tenant's `metadata.uid`.
    pub uid: String,
    /// `spec.database.adoptRetained`: take over objects made for another Tenant or by hand.
    pub adopt: bool,
    /// This Tenant object's status already says its database was provisioned: objects made
    /// before the operator wrote uids are its own.
    pub provisioned_before: bool,
}

impl Claim {
    /// The comment that marks an object as this Tenant's.
    pub fn marker(&self) -> String {
        marker(&self.uid)
    }
}

fn marker(uid: &str) -> String {
    format!("bizosaas.io/tenant-uid={uid}")
}

/// What an existing object's comment says about its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Absent,
    /// Marked with this Tenant's uid.
    Ours,
    /// No uid: made by hand, or by an operator that did not write uids yet.
    Unmarked,
    /// Marked for another Tenant.
    Other,
}

impl Mark {
    /// `row` is `None` when the object does not exist, else its comment.
    pub fn of(row: Option<Option<String>>, claim: &Claim) -> Self {
        match row {
            None => Mark::Absent,
            Some(None) => Mark::Unmarked,
            Some(Some(c)) if c == claim.marker() => Mark::Ours,
            Some(Some(c)) if c.starts_with(&marker("")) => Mark::Other,
            Some(Some(_)) => Mark::Unmarked,
        }
    }
}

/// Whether the Tenant may use (and mark) every object of its name; the first one it may not
/// becomes a [`DatabaseError::Conflict`].
pub fn check<S: AsRef<str>>(objects: &[(S, Mark)], claim: &Claim) -> Result<(), DatabaseError> {
    for (name, mark) in objects {
        let name = name.as_ref();
        let ok = match mark {
            Mark::Absent | Mark::Ours => true,
            Mark::Unmarked => claim.adopt || claim.provisioned_before,
            Mark::Other => claim.adopt,
        };
        if !ok {
            let whose = match mark {
                Mark::Other => "was created for another Tenant of this name (kept by deletionPolicy Retain)",
                _ => "was not created by the operator for this Tenant",
            };
            return Err(DatabaseError::Conflict(format!(
                "{name} already exists and {whose}; nothing was changed. Set spec.database.adoptRetained: true \
                 to take it over with its data, or remove it"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(adopt: bool, provisioned_before: bool) -> Claim {
        Claim { uid: "u-1".into(), adopt, provisioned_before }
    }

    #[test]
    fn comments_name_their_tenant() {
        let c = claim(false, false);
        assert_eq!(Mark::of(None, &c), Mark::Absent);
        assert_eq!(Mark::of(Some(None), &c), Mark::Unmarked);
        assert_eq!(Mark::of(Some(Some("bizosaas.io/tenant-uid=u-1".into())), &c), Mark::Ours);
        assert_eq!(Mark::of(Some(Some("bizosaas.io/tenant-uid=u-2".into())), &c), Mark::Other);
        assert_eq!(Mark::of(Some(Some("made by hand".into())), &c), Mark::Unmarked);
    }

    #[test]
    fn data_of_another_tenant_is_taken_only_when_adopting() {
        let objects = [("role a", Mark::Absent), ("database d", Mark::Other)];
        let err = check(&objects, &claim(false, true)).unwrap_err();
        assert!(matches!(&err, DatabaseError::Conflict(m) if m.starts_with("database d already exists")), "{err}");
        assert!(check(&objects, &claim(true, false)).is_ok());
    }

    #[test]
    fn unmarked_objects_belong_to_a_tenant_that_provisioned_them_before() {
        let objects = [("role a", Mark::Unmarked)];
        assert!(check(&objects, &claim(false, false)).is_err());
        assert!(check(&objects, &claim(false, true)).is_ok());
        assert!(check(&objects, &claim(true, false)).is_ok());
        assert!(check(&[("role a", Mark::Ours), ("database d", Mark::Absent)], &claim(false, false)).is_ok());
    }
}
