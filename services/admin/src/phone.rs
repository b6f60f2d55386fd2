//! Phone numbers normalised to international digits (E.164 without `+`).
//!
//! The schema report holds `254702245555` and `0702245555` for the same
//! Kenyan contact; both normalise to `254702245555` (national numbers take
//! the configured country code, `ALPHADOME_DEFAULT_COUNTRY_CODE`).

/// Why a phone number was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error(
        "phone number {0:?} contains characters other than digits, spaces, '+', '-', '(' and ')'"
    )]
    BadCharacters(String),
    #[error("phone number {0:?} must have 7 to 15 digits in international form")]
    BadLength(String),
    #[error(
        "phone number {0:?} is national (leading 0) and no default country code is configured"
    )]
    NoCountry(String),
}

/// Normalises `input` to international digits, using `country_code` for
/// national numbers written with a leading `0`.
pub fn normalize(input: &str, country_code: &str) -> Result<String, PhoneError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    let mut digits = String::with_capacity(trimmed.len());
    let mut plus = false;
    for (i, c) in trimmed.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => plus = true,
            ' ' | '-' | '(' | ')' | '.' => {}
            _ => return Err(PhoneError::BadCharacters(input.to_owned())),
        }
    }
    let international = if plus {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else if let Some(rest) = digits.strip_prefix('0') {
        if country_code.is_empty() {
            return Err(PhoneError::NoCountry(input.to_owned()));
        }
        format!("{country_code}{rest}")
    } else {
        digits
    };
    if !(7..=15).contains(&international.len()) || international.starts_with('0') {
        return Err(PhoneError::BadLength(input.to_owned()));
    }
    Ok(international)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kenyan_forms_agree() {
        for form in [
            "254702245555",
            "0702245555",
            "+254 702 245 555",
            "00254702245555",
            "+254-702-245-555",
        ] {
            assert_eq!(normalize(form, "254").unwrap(), "254702245555", "{form}");
        }
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(normalize("", "254"), Err(PhoneError::Empty));
        assert!(matches!(
            normalize("07o2", "254"),
            Err(PhoneError::BadCharacters(_))
        ));
        assert!(matches!(
            normalize("12", "254"),
            Err(PhoneError::BadLength(_))
        ));
        assert!(matches!(
            normalize("0702245555", ""),
            Err(PhoneError::NoCountry(_))
        ));
        assert!(matches!(
            normalize("+1234567890123456", "254"),
            Err(PhoneError::BadLength(_))
        ));
    }
}
