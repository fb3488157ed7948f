//! `circleci tests glob`: CircleCI's glob rules. `*` any run of characters but `/`, `**` any
//! run of directories (zero or more), `?` one character but `/`, `[abc]` / `[a-z]` / `[!a]`
//! one of a set, `{foo,bar}` either alternative (nested too), `\` escapes. Patterns are
//! relative to the working directory unless absolute; only files are printed, each once, in
//! the order of the patterns and sorted within one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every alternative of `{…,…}` groups, outermost first; a pattern without braces is itself.
pub fn expand_braces(pattern: &str) -> Vec<String> {
    let bytes = pattern.as_bytes();
    // The first top-level `{` with a matching `}` and a `,` at its own depth.
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'{' => {
                let mut depth = 0;
                let mut commas = Vec::new();
                let mut j = i;
                let mut close = None;
                while j < bytes.len() {
                    match bytes[j] {
                        b'\\' => j += 1,
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                close = Some(j);
                                break;
                            }
                        }
                        b',' if depth == 1 => commas.push(j),
                        _ => {}
                    }
                    j += 1;
                }
                let Some(close) = close else {
                    return vec![pattern.to_owned()];
                };
                let (head, tail) = (&pattern[..i], &pattern[close + 1..]);
                let mut bounds = vec![i];
                bounds.extend(&commas);
                bounds.push(close);
                let mut out = Vec::new();
                for w in bounds.windows(2) {
                    let alt = &pattern[w[0] + 1..w[1]];
                    for e in expand_braces(&format!("{head}{alt}{tail}")) {
                        out.push(e);
                    }
                }
                return out;
            }
            _ => i += 1,
        }
    }
    vec![pattern.to_owned()]
}

/// Does one path segment match one pattern segment (no `/` in either)?
pub fn match_segment(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    // Iterative with one backtrack point for `*` (linear in practice).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class(&p[pi..], n[ni]) {
                        if matched {
                            pi += len;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                '\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == n[ni] {
                        pi += 2;
                        ni += 1;
                        continue;
                    }
                }
                c => {
                    if c == n[ni] {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `[…]` at the start of `p`: whether `c` is in it and the class's length, `None` if unclosed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((found != negate, i + 1));
        }
        first = false;
        let lo = if p[i] == '\\' && i + 1 < p.len() {
            i += 1;
            p[i]
        } else {
            p[i]
        };
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let hi = p[i + 2];
            if lo <= c && c <= hi {
                found = true;
            }
            i += 3;
        } else {
            if lo == c {
                found = true;
            }
            i += 1;
        }
    }
    None
}

/// Does a relative `/`-separated path match a brace-free pattern?
pub fn match_path(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let n: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_segments(&p, &n)
}

fn match_segments(p: &[&str], n: &[&str]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some(&"**") => (0..=n.len()).any(|k| match_segments(&p[1..], &n[k..])),
        Some(seg) => !n.is_empty() && match_segment(seg, n[0]) && match_segments(&p[1..], &n[1..]),
    }
}

/// The files under `base` matching `pattern` (braces expanded), as the pattern names them
/// (relative patterns give relative paths, `./` kept if written).
pub fn glob(base: &Path, pattern: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for pat in expand_braces(pattern) {
        let (root, prefix, rest) = if let Some(r) = pat.strip_prefix('/') {
            (PathBuf::from("/"), "/".to_owned(), r.to_owned())
        } else {
            let mut rest = pat.as_str();
            let mut prefix = String::new();
            while let Some(r) = rest.strip_prefix("./") {
                prefix.push_str("./");
                rest = r;
            }
            (base.to_path_buf(), prefix, rest.to_owned())
        };
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        walk(&root, &prefix, &segs, &mut out);
    }
    out.into_iter().collect()
}

fn walk(dir: &Path, shown: &str, segs: &[&str], out: &mut BTreeSet<String>) {
    let Some((seg, rest)) = segs.split_first() else {
        return;
    };
    if *seg == "**" {
        // Zero directories…
        walk(dir, shown, rest, out);
        // …or one more, then `**` again.
        for (name, path, is_dir) in entries(dir) {
            if is_dir {
                walk(&path, &format!("{shown}{name}/"), segs, out);
            }
        }
        if rest.is_empty() {
            // A trailing `**` matches every file below.
            for (name, _, is_dir) in entries(dir) {
                if !is_dir {
                    out.insert(format!("{shown}{name}"));
                }
            }
        }
        return;
    }
    let literal = !seg.contains(['*', '?', '[', '\\']);
    let candidates: Vec<(String, PathBuf, bool)> = if literal {
        let path = dir.join(seg);
        match std::fs::metadata(&path) {
            Ok(m) => vec![((*seg).to_owned(), path, m.is_dir())],
            Err(_) => Vec::new(),
        }
    } else {
        entries(dir)
            .into_iter()
            .filter(|(name, _, _)| match_segment(seg, name))
            .collect()
    };
    for (name, path, is_dir) in candidates {
        if rest.is_empty() {
            if !is_dir {
                out.insert(format!("{shown}{name}"));
            }
        } else if is_dir {
            walk(&path, &format!("{shown}{name}/"), rest, out);
        }
    }
}

/// A directory's entries: name, path, whether it is a directory (symbolic links followed).
fn entries(dir: &Path) -> Vec<(String, PathBuf, bool)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let path = e.path();
            let is_dir = std::fs::metadata(&path).map(|m| m.is_dir()).ok()?;
            Some((name, path, is_dir))
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_nested_and_escaped() {
        assert_eq!(expand_braces("a/{b,c}/d"), vec!["a/b/d", "a/c/d"]);
        assert_eq!(
            expand_braces("{x,y{1,2}}.rb"),
            vec!["x.rb", "y1.rb", "y2.rb"]
        );
        assert_eq!(expand_braces("no-brace"), vec!["no-brace"]);
        assert_eq!(expand_braces("open{"), vec!["open{"]);
    }

    #[test]
    fn segments_match_like_circleci() {
        assert!(match_segment("*_test.go", "foo_test.go"));
        assert!(!match_segment("*_test.go", "foo_test.gox"));
        assert!(match_segment("?.rb", "a.rb"));
        assert!(!match_segment("?.rb", "ab.rb"));
        assert!(match_segment("[a-c]x", "bx"));
        assert!(!match_segment("[!a-c]x", "bx"));
        assert!(match_segment("\\*", "*"));
        assert!(!match_segment("\\*", "a"));
        assert!(match_segment("a*b*c", "aXXbYYc"));
        assert!(!match_segment("a*b*c", "aXXbYY"));
    }

    #[test]
    fn double_star_matches_zero_or_more_directories() {
        assert!(match_path("spec/**/*_spec.rb", "spec/a_spec.rb"));
        assert!(match_path("spec/**/*_spec.rb", "spec/x/y/a_spec.rb"));
        assert!(!match_path("spec/*/*_spec.rb", "spec/a_spec.rb"));
        assert!(match_path("**/*.py", "t.py"));
    }

    #[test]
    fn globbing_a_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [
            "spec/a_spec.rb",
            "spec/m/b_spec.rb",
            "spec/m/n/c_spec.rb",
            "spec/helper.rb",
            "test/t1.py",
            "test/t2.js",
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, "x").expect("write");
        }
        assert_eq!(
            glob(dir.path(), "spec/**/*_spec.rb"),
            vec!["spec/a_spec.rb", "spec/m/b_spec.rb", "spec/m/n/c_spec.rb"]
        );
        assert_eq!(
            glob(dir.path(), "test/*.{py,js}"),
            vec!["test/t1.py", "test/t2.js"]
        );
        assert_eq!(glob(dir.path(), "./test/t1.py"), vec!["./test/t1.py"]);
        // Directories are not printed, files below a trailing `**` are.
        assert_eq!(glob(dir.path(), "test/**").len(), 2);
        assert!(glob(dir.path(), "spec/*").contains(&"spec/helper.rb".to_owned()));
        assert!(!glob(dir.path(), "spec/*").contains(&"spec/m".to_owned()));
    }
}
