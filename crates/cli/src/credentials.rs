//! The login kept between commands: `<config dir>/signalbox/session.json`,
//! where the config directory is `$XDG_CONFIG_HOME` or `~/.config` on Linux
//! (the platform's own elsewhere, from the `dirs` crate).
//!
//! The file holds a refresh token, which is as good as the password for as
//! long as it lives, so it is readable by its owner only: the directory is
//! created 0700 and the file written 0600, through a temporary file renamed
//! over the old one, so a reader never sees half a file.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// What `signalbox login` stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The gateway that issued the tokens; another gateway's commands do not
    /// use them.
    pub gateway: String,
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

/// Where the session lives.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The user's config directory, as the platform defines it.
    pub fn in_config_dir() -> Result<Self, CliError> {
        let dir = dirs::config_dir().ok_or_else(|| {
            CliError::failed("cannot tell where the config directory is")
                .with_hint("set XDG_CONFIG_HOME (or HOME)")
        })?;
        Ok(Self::at(dir.join("signalbox").join("session.json")))
    }

    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored session, if there is one.
    pub fn load(&self) -> Result<Option<Stored>, CliError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(CliError::failed(format!(
                    "cannot read {}: {error}",
                    self.path.display()
                )))
            }
        };
        serde_json::from_str(&text).map(Some).map_err(|error| {
            CliError::not_logged_in(format!(
                "{} is not a session this version understands ({error})",
                self.path.display()
            ))
        })
    }

    pub fn save(&self, stored: &Stored) -> Result<(), CliError> {
        let fail = |error: std::io::Error| {
            CliError::failed(format!("cannot write {}: {error}", self.path.display()))
        };
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir).map_err(fail)?;
        }
        let temporary = self.path.with_extension("json.tmp");
        let _ = fs::remove_file(&temporary);
        let mut file = private_file(&temporary).map_err(fail)?;
        let text =
            serde_json::to_vec_pretty(stored).map_err(|e| CliError::failed(e.to_string()))?;
        file.write_all(&text).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        fs::rename(&temporary, &self.path).map_err(fail)
    }

    /// Forgets the session; no session is not an error.
    pub fn remove(&self) -> Result<(), CliError> {
        match fs::remove_file(&self.path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(CliError::failed(
                format!("cannot remove {}: {error}", self.path.display()),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

/// A new file only its owner can read and write (created with that mode,
/// not narrowed afterwards, so there is no moment when others could open it).
#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored {
            gateway: "http://127.0.0.1:8080".into(),
            email: "ada@example.com".into(),
            access_token: "a.b.c".into(),
            refresh_token: "r".into(),
        }
    }

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("signalbox-cli-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn a_saved_session_loads_back_and_only_its_owner_can_read_it() {
        let dir = scratch();
        let store = Store::at(dir.join("signalbox").join("session.json"));
        assert_eq!(store.load().unwrap(), None);
        store.save(&stored()).unwrap();
        store.save(&stored()).unwrap(); // over an existing one
        assert_eq!(store.load().unwrap(), Some(stored()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(store.path()), 0o600);
            assert_eq!(mode(store.path().parent().unwrap()), 0o700);
        }
        store.remove().unwrap();
        store.remove().unwrap();
        assert_eq!(store.load().unwrap(), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_session_file_asks_for_a_new_login() {
        let dir = scratch();
        fs::create_dir_all(&dir).unwrap();
        let store = Store::at(dir.join("session.json"));
        fs::write(store.path(), "{not json").unwrap();
        let error = store.load().unwrap_err();
        assert_eq!(error.kind, crate::error::Kind::NotLoggedIn);
        fs::remove_dir_all(dir).unwrap();
    }
}
