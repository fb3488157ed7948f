//! Objects as files under the data directory: a key is a path below it. Putting is a rename
//! within one file system (whole or not there), made durable before it counts.

use super::{ByteStream, ObjectError, Objects};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Reads go out in pieces of this size.
const READ_PIECE: usize = 256 * 1024;

pub struct LocalObjects {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ObjectError + '_ {
    move |source| ObjectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn private_dir(dir: &Path) -> Result<(), ObjectError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

impl LocalObjects {
    /// Objects under `root` (the data directory).
    pub fn open(root: &Path) -> Result<LocalObjects, ObjectError> {
        private_dir(root)?;
        Ok(LocalObjects {
            root: root.to_path_buf(),
        })
    }

    /// The file of `key`. Keys are made by this crate from hex names and job ids; one with
    /// anything but plain components is refused rather than joined.
    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        if key.is_empty()
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(ObjectError::Config(format!("`{key}` is not an object key")));
        }
        Ok(self.root.join(key))
    }

    fn put_blocking(&self, key: &str, file: &Path) -> Result<(), ObjectError> {
        let dest = self.path(key)?;
        if dest == file {
            return Ok(());
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        private_dir(&dir)?;
        std::fs::File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(io(file))?;
        std::fs::rename(file, &dest).map_err(io(&dest))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))
    }
}

impl Objects for LocalObjects {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn is_local(&self) -> bool {
        true
    }

    fn put_file<'a>(
        &'a self,
        key: &'a str,
        file: &'a Path,
    ) -> BoxFuture<'a, Result<(), ObjectError>> {
        // Renames and fsyncs block: off the async workers.
        async move {
            let dest = self.path(key)?;
            let root = self.root.clone();
            let (key, file) = (key.to_owned(), file.to_path_buf());
            tokio::task::spawn_blocking(move || LocalObjects { root }.put_blocking(&key, &file))
                .await
                .map_err(|e| ObjectError::Io {
                    path: dest,
                    source: std::io::Error::other(e.to_string()),
                })?
        }
        .boxed()
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, ObjectError>> {
        async move {
            let p = self.path(key)?;
            match tokio::fs::metadata(&p).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&p)(e)),
            }
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        start: u64,
        end: u64,
    ) -> BoxFuture<'a, Result<ByteStream, ObjectError>> {
        async move {
            let p = self.path(key)?;
            let mut file = tokio::fs::File::open(&p).await.map_err(io(&p))?;
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(io(&p))?;
            let left = end.saturating_sub(start);
            let pieces =
                futures_util::stream::try_unfold((file, left), |(mut f, left)| async move {
                    if left == 0 {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(READ_PIECE);
                    let mut buf = vec![0u8; n];
                    let got = f.read(&mut buf).await?;
                    if got == 0 {
                        return Err(std::io::Error::other("the object's file ended early"));
                    }
                    buf.truncate(got);
                    Ok(Some((Bytes::from(buf), (f, left - got as u64))))
                });
            Ok(Box::pin(pieces) as ByteStream)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            let p = self.path(key)?;
            match tokio::fs::remove_file(&p).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&p)(e)),
            }
        }
        .boxed()
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ObjectError>> {
        async move { Ok(()) }.boxed()
    }
}
