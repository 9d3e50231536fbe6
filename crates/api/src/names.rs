//! Instance and snapshot names: what the daemon accepts (DNS labels, so a name can become a
//! hostname and a DNS record later).

/// A valid name: 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter, not
/// ending with `-`. The error says which rule the name breaks.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} name must not be empty"));
    }
    if name.len() > 63 {
        return Err(format!(
            "{what} name {name:?} is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{what} name {name:?} contains {c:?}; use lower-case letters, digits and '-'"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("{what} name {name:?} must start with a letter"));
    }
    if name.ends_with('-') {
        return Err(format!("{what} name {name:?} must not end with '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "db-1", "a", "mail2"] {
            validate_name("instance", ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("Web", "contains 'W'"),
            ("1web", "start with a letter"),
            ("web-", "end with"),
            ("a/b", "contains '/'"),
            ("..", "contains '.'"),
        ] {
            let e = validate_name("instance", bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = "a".repeat(64);
        assert!(validate_name("instance", &long).unwrap_err().contains("63"));
    }
}
