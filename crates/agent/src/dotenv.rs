//! The dotenv files `bosun execute --context NAME=FILE` reads: one `KEY=value` per line,
//! `export KEY=value` too, `#` comment lines and blank lines skipped. A value is taken as it
//! is (surrounding blanks dropped), or quoted: `'…'` literally, `"…"` with `\n`, `\"` and
//! `\\`. Anything else is refused naming the file and line, never echoing a value (they
//! are secrets).

/// A line that is not a variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct DotenvError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// The variables of dotenv text `text` (named `file` in errors), in order; a name given
/// twice keeps its last value.
pub fn parse(file: &str, text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |message: &str| DotenvError {
            file: file.to_owned(),
            line: i + 1,
            message: message.to_owned(),
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            return Err(err("expected KEY=value"));
        };
        let name = name.trim();
        if !bosun_core::config::valid_env_name(name) {
            return Err(err(
                "not a variable name (letters, digits and _, not first a digit)",
            ));
        }
        let value = value.trim();
        let value = if let Some(rest) = value.strip_prefix('\'') {
            rest.strip_suffix('\'')
                .ok_or_else(|| err("unterminated '…' value"))?
                .to_owned()
        } else if let Some(rest) = value.strip_prefix('"') {
            let inner = rest
                .strip_suffix('"')
                .filter(|s| !s.ends_with('\\') || s.ends_with("\\\\"))
                .ok_or_else(|| err("unterminated \"…\" value"))?;
            let mut s = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    s.push(c);
                    continue;
                }
                match chars.next() {
                    Some('n') => s.push('\n'),
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    _ => {
                        return Err(err(
                            "unknown escape in a \"…\" value (\\n, \\\" and \\\\ are known)",
                        ))
                    }
                }
            }
            s
        } else {
            value.to_owned()
        };
        out.retain(|(n, _)| n != name);
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_quotes_and_export_are_read() {
        let text = "# deploy\n\nAWS_KEY=abc123\nexport REGION = eu-west-1 \nQUOTED=\"a \\\"b\\\"\\nc\"\nLIT='$NOT #x'\nAWS_KEY=again\nEMPTY=\n";
        assert_eq!(
            parse("prod.env", text).expect("parsed"),
            vec![
                ("REGION".into(), "eu-west-1".into()),
                ("QUOTED".into(), "a \"b\"\nc".into()),
                ("LIT".into(), "$NOT #x".into()),
                ("AWS_KEY".into(), "again".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
    }

    #[test]
    fn bad_lines_name_the_file_and_line_but_not_the_value() {
        for (text, line, needle) in [
            ("OK=1\nno equals sign here\n", 2, "expected KEY=value"),
            ("1BAD=secret-value\n", 1, "not a variable name"),
            ("A=\"secret-value\n", 1, "unterminated"),
            ("A='secret-value\n", 1, "unterminated"),
            ("A=\"secret\\t\"\n", 1, "unknown escape"),
        ] {
            let e = parse("x.env", text).expect_err(text);
            assert_eq!(e.line, line, "{text}");
            assert!(e.to_string().starts_with(&format!("x.env:{line}: ")), "{e}");
            assert!(e.message.contains(needle), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}
