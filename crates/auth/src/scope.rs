//! OAuth scopes (RFC 6749 §3.3): what an access token lets its bearer do.
//!
//! A token carries them in its `scope` claim, space-separated (RFC 9068
//! §2.2.3); the gateway requires one per route (`orders:read` to read
//! orders, `orders:write` to place or cancel one) and answers 403
//! `insufficient_scope` without it. Users get `tokens.user_scopes`; a service
//! account gets the scopes it was created with, or fewer if it asks for
//! fewer.

use std::collections::BTreeSet;

/// Every scope a service account may be created with. A typo in
/// `auth create-client --scopes` fails loudly instead of creating an account
/// that can do nothing.
/// `system:admin` reads the gateway's internals (`GET /api/system/upstreams`)
/// and `catalog:admin` changes products (`PATCH /api/catalog/products/{id}`);
/// users never get them, an operator's service account is created with them.
pub const KNOWN_SCOPES: [&str; 4] = [
    "catalog:admin",
    "orders:read",
    "orders:write",
    "system:admin",
];

/// A set of scopes, kept sorted so its string form is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(BTreeSet<String>);

impl Scopes {
    /// Parses a space-separated list. Each scope is one or more of the
    /// characters RFC 6749 §3.3 allows (printable ASCII except space, `"`
    /// and `\`); repeated spaces and duplicates are tolerated.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut scopes = BTreeSet::new();
        for scope in raw.split(' ').filter(|s| !s.is_empty()) {
            let allowed =
                |c: char| c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c);
            if !scope.chars().all(allowed) {
                return Err(format!("`{scope}` is not a valid scope"));
            }
            scopes.insert(scope.to_owned());
        }
        Ok(Self(scopes))
    }

    /// Like [`Self::parse`], but only scopes in [`KNOWN_SCOPES`].
    pub fn parse_known(raw: &str) -> Result<Self, String> {
        let scopes = Self::parse(raw)?;
        match scopes
            .0
            .iter()
            .find(|s| !KNOWN_SCOPES.contains(&s.as_str()))
        {
            Some(unknown) => Err(format!(
                "`{unknown}` is not a known scope (known: {})",
                KNOWN_SCOPES.join(", ")
            )),
            None => Ok(scopes),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every scope of `other` is in `self`.
    pub fn contains_all(&self, other: &Scopes) -> bool {
        other.0.is_subset(&self.0)
    }

    /// What a client gets for `requested` out of `self` (RFC 6749 §3.3): all
    /// of `self` when it asked for nothing in particular; `requested` when it
    /// is a subset; `None` when it asks for more.
    pub fn grant(&self, requested: &Scopes) -> Option<Scopes> {
        if requested.is_empty() {
            Some(self.clone())
        } else if self.contains_all(requested) {
            Some(requested.clone())
        } else {
            None
        }
    }
}

impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for scope in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(scope)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_sorted_and_deduplicated() {
        let scopes = Scopes::parse("  orders:write orders:read  orders:write").unwrap();
        assert_eq!(scopes.to_string(), "orders:read orders:write");
        assert!(Scopes::parse("").unwrap().is_empty());
    }

    #[test]
    fn characters_outside_rfc_6749_are_refused() {
        for raw in ["a\"b", "a\\b", "é", "a\tb"] {
            assert!(Scopes::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn only_known_scopes_make_a_service_account() {
        assert!(Scopes::parse_known("orders:read").is_ok());
        let error = Scopes::parse_known("orders:read orders:delete").unwrap_err();
        assert!(error.contains("orders:delete"), "{error}");
    }

    #[test]
    fn a_grant_is_everything_or_a_subset_never_more() {
        let allowed = Scopes::parse("orders:read orders:write").unwrap();
        let read = Scopes::parse("orders:read").unwrap();
        let more = Scopes::parse("orders:read admin").unwrap();

        assert_eq!(allowed.grant(&Scopes::default()), Some(allowed.clone()));
        assert_eq!(allowed.grant(&read), Some(read.clone()));
        assert_eq!(read.grant(&allowed), None);
        assert_eq!(allowed.grant(&more), None);
    }
}
