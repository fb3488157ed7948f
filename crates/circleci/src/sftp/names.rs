//! Who is who in the container: home directories (for `~` and where relative paths start, as
//! sshd does) and the user and group names of `ls -l`'s lines, from the container's own
//! `/etc/passwd` and `/etc/group` (no NSS in a static executable; an image without those files
//! gets numbers).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// `/etc/passwd` and `/etc/group`, read once.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    homes: HashMap<Vec<u8>, PathBuf>,
    home_of_uid: HashMap<u32, PathBuf>,
}

impl Names {
    pub fn load() -> Self {
        let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
        let group = std::fs::read("/etc/group").unwrap_or_default();
        Self::parse(&passwd, &group)
    }

    pub fn parse(passwd: &[u8], group: &[u8]) -> Self {
        let mut n = Names::default();
        for line in passwd.split(|b| *b == b'\n') {
            let f: Vec<&[u8]> = line.split(|b| *b == b':').collect();
            if f.len() < 6 || f[0].is_empty() {
                continue;
            }
            let Some(uid) = number(f[2]) else { continue };
            let home = PathBuf::from(OsStr::from_bytes(f[5]));
            n.users
                .entry(uid)
                .or_insert_with(|| String::from_utf8_lossy(f[0]).into_owned());
            n.home_of_uid.entry(uid).or_insert_with(|| home.clone());
            n.homes.entry(f[0].to_vec()).or_insert(home);
        }
        for line in group.split(|b| *b == b'\n') {
            let f: Vec<&[u8]> = line.split(|b| *b == b':').collect();
            if f.len() < 3 || f[0].is_empty() {
                continue;
            }
            if let Some(gid) = number(f[2]) {
                n.groups
                    .entry(gid)
                    .or_insert_with(|| String::from_utf8_lossy(f[0]).into_owned());
            }
        }
        n
    }

    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }

    /// A user's home by name (`~name`).
    pub fn home_of(&self, name: &[u8]) -> Option<PathBuf> {
        self.homes.get(name).cloned()
    }

    /// This process's home, as sshd finds it: the password entry of who it runs as, else
    /// `$HOME`, else `/`.
    pub fn own_home(&self) -> PathBuf {
        extern "C" {
            fn geteuid() -> u32;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { geteuid() };
        self.home_of_uid
            .get(&uid)
            .filter(|h| h.is_absolute())
            .cloned()
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .filter(|h| h.is_absolute())
            })
            .unwrap_or_else(|| PathBuf::from("/"))
    }
}

fn number(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// An `ls -l` line, as OpenSSH's sftp-server writes READDIR's long names.
pub fn long_name(names: &Names, name: &[u8], m: &std::fs::Metadata, now: i64) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let user = names.user(m.uid());
    let group = names.group(m.gid());
    let mut line = format!(
        "{} {:>3} {:<8} {:<8} {:>8} {} ",
        mode_string(m.mode()),
        m.nlink(),
        user,
        group,
        m.size(),
        date(m.mtime(), now)
    )
    .into_bytes();
    line.extend_from_slice(name);
    line
}

/// `drwxr-xr-x` and its kin.
pub fn mode_string(mode: u32) -> String {
    let kind = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o010000 => 'p',
        0o140000 => 's',
        0o020000 => 'c',
        0o060000 => 'b',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set, unset)) in special.iter().enumerate() {
        let shift = 6 - 3 * i as u32;
        let rwx = (mode >> shift) & 7;
        s.push(if rwx & 4 != 0 { 'r' } else { '-' });
        s.push(if rwx & 2 != 0 { 'w' } else { '-' });
        s.push(match (mode & bit != 0, rwx & 1 != 0) {
            (true, true) => *set,
            (true, false) => *unset,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `Dec  7 15:13` for the last six months, `Dec  7  2025` before (UTC: a static executable
/// has no time zone database).
fn date(t: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    let month = MONTHS[(m - 1).clamp(0, 11) as usize];
    if (now - t).abs() < 182 * 86_400 {
        format!("{month} {d:>2} {:02}:{:02}", secs / 3600, secs % 3600 / 60)
    } else {
        format!("{month} {d:>2}  {y}")
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian (Howard
/// Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_give_names_and_homes_and_numbers_stand_in_for_the_rest() {
        let n = Names::parse(
            b"root:x:0:0:root:/root:/bin/bash\ncircleci:x:3434:3434::/home/circleci:/bin/bash\nbroken\n",
            b"root:x:0:\ncircleci:x:3434:\n",
        );
        assert_eq!(n.user(3434), "circleci");
        assert_eq!(n.group(0), "root");
        assert_eq!(n.user(99), "99");
        assert_eq!(
            n.home_of(b"circleci"),
            Some(PathBuf::from("/home/circleci"))
        );
        assert_eq!(n.home_of(b"nobody"), None);
    }

    #[test]
    fn modes_and_dates_read_as_ls_writes_them() {
        assert_eq!(mode_string(0o040755), "drwxr-xr-x");
        assert_eq!(mode_string(0o100644), "-rw-r--r--");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
        // 2026-12-07 15:13 UTC.
        let t = 1_796_656_380;
        assert_eq!(date(t, t + 60), "Dec  7 15:13");
        assert_eq!(date(0, t), "Jan  1  1970");
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(19_782), (2024, 2, 29));
    }
}
