//! Text that Keel stores: every stored string field goes through [`clean`], so that NUL bytes
//! (which PostgreSQL refuses and SQLite keeps), control characters and bidirectional overrides
//! (which make a name display as something else) are refused the same way on both backends.

/// Why a text field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain control characters or bidirectional formatting characters")]
    ForbiddenCharacter,
}

/// Whether `c` may appear in stored text: no control characters (C0, DEL, C1, NUL included)
/// and none of the bidirectional formatting characters (marks, embeddings, overrides,
/// isolates; the "Trojan Source" set).
pub fn is_allowed(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Trims `value` and checks it: at most `max_chars` characters, none of them forbidden.
/// Returns `None` for an empty value.
pub fn clean(value: &str, max_chars: usize) -> Result<Option<String>, TextError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if !value.chars().all(is_allowed) {
        return Err(TextError::ForbiddenCharacter);
    }
    if value.chars().count() > max_chars {
        return Err(TextError::TooLong(max_chars));
    }
    Ok(Some(value.to_owned()))
}

/// Like [`clean`], for a field that must not be empty.
pub fn clean_required(value: &str, max_chars: usize) -> Result<String, TextError> {
    clean(value, max_chars)?.ok_or(TextError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_controls_and_bidi_overrides_are_refused() {
        for bad in ["a\u{0}b", "a\tb", "a\nb", "a\u{7f}b", "a\u{85}b", "a\u{202E}b", "a\u{2066}b", "a\u{200F}b"] {
            assert_eq!(clean(bad, 100), Err(TextError::ForbiddenCharacter), "{bad:?}");
        }
        assert_eq!(clean("  Zoë 🚀 أحمد ", 100), Ok(Some("Zoë 🚀 أحمد".to_owned())));
        // Surrounding whitespace (tabs and newlines included) is trimmed, not refused.
        assert_eq!(clean("\n Acme \t", 100), Ok(Some("Acme".to_owned())));
    }

    #[test]
    fn length_is_counted_in_characters_and_empty_is_none() {
        assert_eq!(clean(&"é".repeat(5), 5), Ok(Some("é".repeat(5))));
        assert_eq!(clean(&"é".repeat(6), 5), Err(TextError::TooLong(5)));
        assert_eq!(clean("   ", 5), Ok(None));
        assert_eq!(clean_required("   ", 5), Err(TextError::Empty));
    }
}
