//! Image files: bounded reads and atomic writes.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    decode, encode_with, EncodeOptions, EncodeStats, Image, ImageRef, ReadError, WriteError,
    DEFAULT_MAX_FILE_LEN,
};

/// Reads and decodes the image at `path`, refusing files larger than
/// [`DEFAULT_MAX_FILE_LEN`].
pub fn read_file(path: &Path) -> Result<Image, ReadError> {
    read_file_with_limit(path, DEFAULT_MAX_FILE_LEN)
}

/// Reads and decodes the image at `path`, refusing files larger than
/// `max_len` bytes before reading them.
pub fn read_file_with_limit(path: &Path, max_len: u64) -> Result<Image, ReadError> {
    let bytes = read_bytes(path, max_len)?;
    decode(&bytes).map_err(|source| ReadError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the raw bytes of the image file at `path` (no decoding), refusing
/// files larger than `max_len` bytes before reading them. Pair it with
/// [`crate::view`] to restore without copying memory twice.
pub fn read_bytes(path: &Path, max_len: u64) -> Result<Vec<u8>, ReadError> {
    let open_error = |source| ReadError::Open {
        path: path.to_path_buf(),
        source,
    };
    let read_error = |source| ReadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let too_large = |len| ReadError::TooLarge {
        path: path.to_path_buf(),
        len,
        limit: max_len,
    };
    let file = File::open(path).map_err(open_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    if len > max_len {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // The file may grow while it is read: never take more than the limit.
    file.take(max_len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max_len {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Encodes `image` to `path` atomically with default options; see
/// [`write_file_with`].
pub fn write_file(path: &Path, image: &ImageRef<'_>) -> Result<EncodeStats, WriteError> {
    write_file_with(path, image, &EncodeOptions::default())
}

/// Encodes `image` to `path` atomically: the image is written to a temporary
/// file in the same directory, synced to disk and renamed over `path`, and
/// the directory is synced. On failure `path` is untouched (an existing file
/// keeps its old content) and the temporary file is removed.
pub fn write_file_with(
    path: &Path,
    image: &ImageRef<'_>,
    options: &EncodeOptions,
) -> Result<EncodeStats, WriteError> {
    write_atomic(path, |file, _tmp| {
        encode_with(image, file, options).map_err(|source| WriteError::Encode {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Removes the temporary file unless disarmed.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Runs `fill` on a fresh temporary file next to `path`, then syncs it and
/// renames it to `path`.
pub(crate) fn write_atomic<T>(
    path: &Path,
    fill: impl FnOnce(&mut File, &Path) -> Result<T, WriteError>,
) -> Result<T, WriteError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| WriteError::InvalidPath {
        path: path.to_path_buf(),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp_path = dir.join(tmp_name);

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|source| WriteError::CreateTemp {
            path: tmp_path.clone(),
            source,
        })?;
    let mut guard = TempFile {
        path: tmp_path,
        armed: true,
    };
    let value = fill(&mut file, &guard.path)?;
    file.sync_all().map_err(|source| WriteError::Sync {
        path: guard.path.clone(),
        source,
    })?;
    drop(file);
    fs::rename(&guard.path, path).map_err(|source| WriteError::Rename {
        from: guard.path.clone(),
        to: path.to_path_buf(),
        source,
    })?;
    guard.armed = false;
    sync_dir(dir)?;
    Ok(value)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| WriteError::SyncDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), WriteError> {
    // Directories cannot be opened for syncing here; the rename is as
    // durable as the platform makes it.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tern-image-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn failing_fill_leaves_nothing_behind() {
        let dir = scratch_dir("atomic");
        let path = dir.join("img.tern");
        let result: Result<(), _> = write_atomic(&path, |file, tmp| {
            file.write_all(b"half an image").unwrap();
            Err(WriteError::Encode {
                path: tmp.to_path_buf(),
                source: crate::EncodeError::Write(std::io::Error::other("disk full")),
            })
        });
        assert!(matches!(result, Err(WriteError::Encode { .. })));
        assert!(!path.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "temp file left");

        // An existing image survives a failed overwrite.
        fs::write(&path, b"old").unwrap();
        let result: Result<(), _> = write_atomic(&path, |file, tmp| {
            file.write_all(b"new, partial").unwrap();
            Err(WriteError::Sync {
                path: tmp.to_path_buf(),
                source: std::io::Error::other("boom"),
            })
        });
        assert!(result.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn panicking_fill_leaves_nothing_behind() {
        let dir = scratch_dir("panic");
        let path = dir.join("img.tern");
        let caught = std::panic::catch_unwind(|| {
            let _ = write_atomic::<()>(&path, |file, _| {
                file.write_all(b"partial").unwrap();
                panic!("writer crashed");
            });
        });
        assert!(caught.is_err());
        assert!(!path.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
