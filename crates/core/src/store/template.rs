//! Cache key templates: `deps-{{ checksum "package-lock.json" }}-{{ .Branch }}`.
//!
//! Pure: file checksums come through a callback (the job reads the file in the container).

use base64::Engine;
use sha2::{Digest, Sha256};

/// What a template can refer to.
pub struct KeyContext<'a> {
    pub branch: &'a str,
    pub revision: &'a str,
    pub build_num: u64,
    /// The job's environment as steps see it (`{{ .Environment.VAR }}`).
    pub env: &'a [(String, String)],
    pub epoch: u64,
    pub arch: &'a str,
}

/// CircleCI's `{{ checksum "file" }}`: base64 of the file's SHA-256.
pub fn checksum(content: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(content))
}

/// `arch` as CircleCI spells it, for the machine the job runs on.
pub fn arch() -> String {
    let cpu = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("arch1-{}-{cpu}", std::env::consts::OS)
}

/// Render `template`. Unknown expressions are errors (a typo would otherwise make a key that
/// never matches).
pub fn render(
    template: &str,
    ctx: &KeyContext,
    checksum_of: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("`{template}`: `{{{{` without a closing `}}}}`"))?;
        let expr = after[..end].trim();
        out.push_str(&eval(expr, ctx, checksum_of).map_err(|e| format!("`{template}`: {e}"))?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn eval(
    expr: &str,
    ctx: &KeyContext,
    checksum_of: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    match expr {
        ".Branch" => return Ok(ctx.branch.to_owned()),
        ".Revision" => return Ok(ctx.revision.to_owned()),
        ".BuildNum" => return Ok(ctx.build_num.to_string()),
        "epoch" => return Ok(ctx.epoch.to_string()),
        "arch" => return Ok(ctx.arch.to_owned()),
        _ => {}
    }
    if let Some(var) = expr.strip_prefix(".Environment.") {
        return Ok(ctx
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
            .unwrap_or_default());
    }
    if let Some(arg) = expr.strip_prefix("checksum") {
        let arg = arg.trim();
        let file = arg
            .strip_prefix('"')
            .and_then(|a| a.strip_suffix('"'))
            .ok_or_else(|| format!("checksum takes a quoted file name, found `{arg}`"))?;
        return checksum_of(file);
    }
    Err(format!(
        "unknown template expression `{{{{ {expr} }}}}` (known: .Branch, .Revision, .BuildNum, .Environment.NAME, checksum \"FILE\", epoch, arch)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_expression() {
        let env = vec![("NODE".to_owned(), "20".to_owned())];
        let ctx = KeyContext {
            branch: "main",
            revision: "abc123",
            build_num: 7,
            env: &env,
            epoch: 1700000000,
            arch: "arch1-linux-amd64",
        };
        let mut asked = Vec::new();
        let mut sum = |f: &str| {
            asked.push(f.to_owned());
            Ok(checksum(b"lock"))
        };
        let key = render(
            "v1-{{ .Branch }}-{{.Revision}}-{{ .BuildNum }}-{{ .Environment.NODE }}-{{ checksum \"package-lock.json\" }}-{{ epoch }}-{{ arch }}",
            &ctx,
            &mut sum,
        )
        .expect("renders");
        assert_eq!(
            key,
            format!(
                "v1-main-abc123-7-20-{}-1700000000-arch1-linux-amd64",
                checksum(b"lock")
            )
        );
        assert!(render("{{ .Brnach }}", &ctx, &mut sum).is_err());
        assert!(render("v1-{{ .Branch", &ctx, &mut sum).is_err());
        assert_eq!(render("plain", &ctx, &mut sum).as_deref(), Ok("plain"));
        assert_eq!(asked, ["package-lock.json"]);
    }

    #[test]
    fn checksum_is_base64_sha256() {
        assert_eq!(
            checksum(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }
}
