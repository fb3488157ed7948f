//! The CLI's `context` commands: create, list and remove contexts, set and remove their
//! variables (a value from stdin or `--value-file`, never from the command line, where `ps`
//! and shell histories would show it), list variable names (never values), and restrict a
//! context to a project, a security group or an expression. Each is one store call through
//! [`ContextStore`](super::store::ContextStore).

use super::model::contexts::{Restriction, RestrictionKind};
use super::{CoordError, DataArg, Result};
use std::io::Read;
use std::path::PathBuf;

/// Longest variable value accepted (CircleCI's limit is 32 KiB as well).
const MAX_VALUE: u64 = 32 * 1024;

#[derive(clap::Subcommand, Debug)]
pub enum ContextCommand {
    /// Create a context.
    Create {
        #[command(flatten)]
        data: DataArg,
        name: String,
        /// Whose it is (a Bitbucket workspace, as CircleCI's organization); default: none.
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// List contexts (name, id, owner).
    Ls {
        #[command(flatten)]
        data: DataArg,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Remove a context with its variables and restrictions.
    Rm {
        #[command(flatten)]
        data: DataArg,
        name: String,
    },
    /// A context's variables: `set NAME KEY` (value on stdin or from --value-file),
    /// `rm NAME KEY`, `ls NAME` (names only).
    #[command(subcommand)]
    Env(EnvCommand),
    /// Restrict a context: to a project (`--project SLUG`), to the members of a security
    /// group (`--group G`), or to pipelines an expression holds for (`--expression`, CircleCI's
    /// language, e.g. 'pipeline.git.branch == "main"'). Without one of them: list the
    /// context's restrictions.
    Restrict {
        #[command(flatten)]
        data: DataArg,
        name: String,
        #[arg(long, conflicts_with_all = ["group", "expression", "remove"])]
        project: Option<String>,
        #[arg(long, conflicts_with_all = ["expression", "remove"])]
        group: Option<String>,
        #[arg(long, conflicts_with = "remove")]
        expression: Option<String>,
        /// Remove the restriction with this id (as listed).
        #[arg(long, value_name = "ID")]
        remove: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum EnvCommand {
    Set {
        #[command(flatten)]
        data: DataArg,
        name: String,
        key: String,
        /// Read the value from this file instead of stdin (one trailing newline dropped).
        #[arg(long, value_name = "FILE")]
        value_file: Option<PathBuf>,
    },
    Rm {
        #[command(flatten)]
        data: DataArg,
        name: String,
        key: String,
    },
    Ls {
        #[command(flatten)]
        data: DataArg,
        name: String,
    },
}

/// A value as given: at most [`MAX_VALUE`] bytes of UTF-8, one trailing newline (what
/// `echo` and editors add) dropped.
fn read_value(from: &mut dyn Read, what: &str) -> Result<zeroize::Zeroizing<String>> {
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    from.take(MAX_VALUE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CoordError::Io {
            path: what.into(),
            source,
        })?;
    if bytes.len() as u64 > MAX_VALUE {
        return Err(CoordError::Invalid(format!(
            "{what}: a value is at most {MAX_VALUE} bytes"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| CoordError::Invalid(format!("{what}: the value is not UTF-8")))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text);
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

fn time(ms: i64) -> String {
    bosun_protocol::time::iso_utc(ms)
}

pub fn run(c: ContextCommand, print: &mut dyn FnMut(String)) -> Result<()> {
    match c {
        ContextCommand::Create { data, name, owner } => {
            let row = data.open()?.create_context(&name, &owner)?;
            print(format!("context {} ({})", row.name, row.id));
        }
        ContextCommand::Ls { data, owner } => {
            for c in data.open()?.list_contexts(owner.as_deref())? {
                print(
                    format!(
                        "{:<24} {}  {}",
                        crate::text::printable(&c.name),
                        c.id,
                        crate::text::printable(&c.owner)
                    )
                    .trim_end()
                    .to_owned(),
                );
            }
        }
        ContextCommand::Rm { data, name } => {
            data.open()?.delete_context(&name)?;
            print(format!("context {name} removed"));
        }
        ContextCommand::Env(EnvCommand::Set {
            data,
            name,
            key,
            value_file,
        }) => {
            let value = match &value_file {
                Some(f) => {
                    let mut file = std::fs::File::open(f).map_err(|source| CoordError::Io {
                        path: f.clone(),
                        source,
                    })?;
                    read_value(&mut file, &f.display().to_string())?
                }
                None => read_value(&mut std::io::stdin().lock(), "stdin")?,
            };
            let row = data.open()?.set_context_var(&name, &key, &value)?;
            print(format!("{name}: {} set", row.name));
        }
        ContextCommand::Env(EnvCommand::Rm { data, name, key }) => {
            data.open()?.remove_context_var(&name, &key)?;
            print(format!("{name}: {key} removed"));
        }
        ContextCommand::Env(EnvCommand::Ls { data, name }) => {
            for v in data.open()?.list_context_vars(&name)? {
                print(format!("{:<32} updated {}", v.name, time(v.updated)));
            }
        }
        ContextCommand::Restrict {
            data,
            name,
            project,
            group,
            expression,
            remove,
        } => {
            let store = data.open()?;
            let given = [
                (RestrictionKind::Project, project),
                (RestrictionKind::Group, group),
                (RestrictionKind::Expression, expression),
            ]
            .into_iter()
            .find_map(|(kind, v)| v.map(|value| Restriction { kind, value }));
            match (given, remove) {
                (Some(r), _) => {
                    let row = store.add_restriction(&name, &r)?;
                    print(format!("{name}: restricted ({} {})", row.kind, row.id));
                }
                (None, Some(id)) => {
                    store.remove_restriction(&name, &id)?;
                    print(format!("{name}: restriction {id} removed"));
                }
                (None, None) => {
                    for r in store.list_restrictions(&name)? {
                        print(format!(
                            "{}  {:<10} {}",
                            r.id,
                            r.kind.as_str(),
                            crate::text::printable(&r.value)
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_loses_one_trailing_newline_and_is_bounded() {
        let v = |s: &[u8]| read_value(&mut &s[..], "stdin").map(|z| z.as_str().to_owned());
        assert_eq!(v(b"s3cret\n").expect("ok"), "s3cret");
        assert_eq!(v(b"s3cret\r\n").expect("ok"), "s3cret");
        assert_eq!(v(b"two\n\n").expect("ok"), "two\n");
        assert_eq!(v(b"none").expect("ok"), "none");
        assert!(v(&[0xff, 0xfe]).is_err());
        let big = vec![b'a'; MAX_VALUE as usize + 1];
        let e = v(&big).expect_err("big").to_string();
        assert!(e.contains("at most"), "{e}");
    }
}
