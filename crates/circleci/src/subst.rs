//! `circleci env subst`: environment variables substituted into text, as `envsubst` does:
//! `$NAME`, `${NAME}`, `${NAME:-default}` / `${NAME-default}` (default when unset or empty /
//! when unset), `${NAME:=default}` likewise; `$$` is a literal `$`. An unset variable becomes
//! the empty string; anything that is not a variable reference is left as it is.

pub fn subst(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut plain = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&text[plain..i]);
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => match text[i + 2..].find('}') {
                Some(len) => {
                    let inner = &text[i + 2..i + 2 + len];
                    match braced(inner, lookup) {
                        Some(v) => out.push_str(&v),
                        None => out.push_str(&text[i..i + 3 + len]),
                    }
                    i += 3 + len;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            },
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                    end += 1;
                }
                out.push_str(&lookup(&text[start..end]).unwrap_or_default());
                i = end;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
        plain = i;
    }
    out.push_str(&text[plain..]);
    out
}

/// The value of `NAME`, `NAME:-word`, `NAME-word`, `NAME:=word`, `NAME=word`; `None` when
/// `inner` is not a variable reference (left untouched).
fn braced(inner: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(end);
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let value = lookup(name);
    if op.is_empty() {
        return Some(value.unwrap_or_default());
    }
    for (prefix, empty_counts) in [(":-", true), (":=", true), ("-", false), ("=", false)] {
        if let Some(word) = op.strip_prefix(prefix) {
            return Some(match value {
                Some(v) if !(empty_counts && v.is_empty()) => v,
                _ => subst(word, lookup),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "NAME" => Some("world".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_like_envsubst() {
        assert_eq!(subst("hello $NAME!", &env), "hello world!");
        assert_eq!(subst("hello ${NAME}s", &env), "hello worlds");
        assert_eq!(subst("[$MISSING]", &env), "[]");
        assert_eq!(subst("${MISSING:-def}", &env), "def");
        assert_eq!(subst("${EMPTY:-def}|${EMPTY-def}", &env), "def|");
        assert_eq!(subst("${MISSING:-$NAME}", &env), "world");
        assert_eq!(
            subst("cost: $$5, $5, ${1}, $", &env),
            "cost: $5, $5, ${1}, $"
        );
        assert_eq!(subst("unclosed ${NAME", &env), "unclosed ${NAME");
        assert_eq!(subst("ünïcode $NAME ✓", &env), "ünïcode world ✓");
    }
}
