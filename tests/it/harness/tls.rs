//! A throwaway certificate authority and a server certificate signed by it, made with the
//! `openssl` CLI (not the code under test): for the coordinator's `--tls-cert/--tls-key` and
//! an agent's `ca_file`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCa {
    /// The CA certificate (PEM): what a client trusts.
    pub ca_cert: PathBuf,
    /// The server's certificate (PEM), for `names` (DNS names or IP addresses).
    pub cert: PathBuf,
    /// The server's private key (PEM, 0600).
    pub key: PathBuf,
}

impl TestCa {
    /// A CA and a server certificate for `names`, as files in `dir`.
    pub fn new(dir: &Path, names: &[&str]) -> TestCa {
        std::fs::create_dir_all(dir).expect("tls dir");
        let p = |f: &str| dir.join(f);
        let openssl = |args: &[&str]| {
            let mut c = Command::new("openssl");
            c.args(args).current_dir(dir);
            super::run(&mut c);
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bosun test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let san: Vec<String> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect();
        std::fs::write(
            p("ext.cnf"),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .expect("ext");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={}", names[0]),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p("server.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        TestCa {
            ca_cert: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
        }
    }
}
