//! The values a user hands us, parsed once at the edge: parse, don't
//! validate. Code that holds an [`Email`] or a [`Password`] knows it is
//! acceptable and never checks again.

use secrecy::SecretString;

/// RFC 5321 bounds a forward path to 256 octets, two of them the angle
/// brackets.
pub const MAX_EMAIL_LEN: usize = 254;
/// NIST SP 800-63B: at least 8 characters; the upper bound only stops
/// abuse, it is long enough for any passphrase.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A normalised email address: trimmed and lower-cased, so `Ann@Example.org`
/// and `ann@example.org ` are one account. The check is deliberately loose
/// (the only real test of an address is a mail that arrives); it rejects what
/// is clearly not an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("the email is empty".to_owned());
        }
        if email.len() > MAX_EMAIL_LEN {
            return Err(format!(
                "the email is longer than {MAX_EMAIL_LEN} characters"
            ));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the email contains whitespace".to_owned());
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err("the email has no '@'".to_owned());
        };
        if domain.contains('@') {
            return Err("the email has more than one '@'".to_owned());
        }
        if local.is_empty() {
            return Err("the email has nothing before the '@'".to_owned());
        }
        if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
            return Err("the email domain is not a domain name".to_owned());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A new password that meets the policy. Kept secret so it never shows up in
/// `Debug` output or logs.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    /// Length is counted in characters, not bytes, so a passphrase in any
    /// script gets the same allowance.
    pub fn parse(raw: String) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!(
                "the password must be at least {MIN_PASSWORD_CHARS} characters long"
            ));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(format!(
                "the password must be at most {MAX_PASSWORD_CHARS} characters long"
            ));
        }
        Ok(Self(SecretString::from(raw)))
    }
}

impl From<Password> for SecretString {
    fn from(password: Password) -> Self {
        password.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_is_trimmed_and_lower_cased() {
        let email = Email::parse("  Ann.Lee@Example.ORG \n").unwrap();
        assert_eq!(email.as_str(), "ann.lee@example.org");
    }

    #[test]
    fn plausible_addresses_are_accepted() {
        for raw in ["a@b.co", "first.last+tag@sub.example.com", "ü@exämple.de"] {
            assert!(Email::parse(raw).is_ok(), "{raw}");
        }
    }

    #[test]
    fn things_that_are_not_addresses_are_refused() {
        for raw in [
            "",
            "   ",
            "plainaddress",
            "@example.org",
            "ann@",
            "ann@localhost",
            "ann@@example.org",
            "ann@b@example.org",
            "ann lee@example.org",
            "ann@exa\tmple.org",
            "ann@.org",
            "ann@example.",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} was accepted");
        }
    }

    #[test]
    fn an_email_of_254_characters_is_accepted_and_255_refused() {
        let domain = "@example.org";
        let at_limit = format!("{}{domain}", "a".repeat(MAX_EMAIL_LEN - domain.len()));
        assert_eq!(at_limit.len(), 254);
        assert!(Email::parse(&at_limit).is_ok());
        let over = format!("a{at_limit}");
        assert!(Email::parse(&over).unwrap_err().contains("longer than 254"));
    }

    #[test]
    fn a_password_needs_between_8_and_128_characters() {
        assert!(Password::parse("1234567".to_owned())
            .unwrap_err()
            .contains("at least 8"));
        assert!(Password::parse("12345678".to_owned()).is_ok());
        assert!(Password::parse("x".repeat(128)).is_ok());
        assert!(Password::parse("x".repeat(129))
            .unwrap_err()
            .contains("at most 128"));
    }

    #[test]
    fn password_length_counts_characters_not_bytes() {
        // Eight characters, sixteen bytes in UTF-8.
        let eight = "ééééééé".to_owned() + "é";
        assert_eq!(eight.len(), 16);
        assert!(Password::parse(eight).is_ok());
        // 128 three-byte characters: 384 bytes, still allowed.
        assert!(Password::parse("€".repeat(128)).is_ok());
        // Seven characters, fourteen bytes: still too short.
        assert!(Password::parse("é".repeat(7)).is_err());
    }

    #[test]
    fn a_password_does_not_show_in_debug_output() {
        let password = Password::parse("correct horse battery".to_owned()).unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}
