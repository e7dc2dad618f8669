//! Files kept per adapter in the cache directory: the tune cache (one JSON
//! file per adapter) and the pipeline lists of `Device::warm_start` (one per
//! adapter and workload). Each file's header names the adapter, backend,
//! driver and engine version its entries belong to; a file that does not
//! parse or whose header is another's (a driver update, a copied home
//! directory) is ignored with a warning and rewritten. Writes go to a
//! temporary file renamed into place, so a reader never sees half a file; a
//! directory that cannot be written is a warning, and the results stay in
//! memory.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::TuneEntry;

/// What a file holds: its name's prefix, its format tag and how warnings name it.
pub(crate) struct Kind {
    prefix: String,
    format: &'static str,
    what: &'static str,
    /// What goes on without a usable file, for the warnings.
    without: &'static str,
}

/// What the timings are valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AdapterKey {
    adapter: String,
    vendor: u32,
    device: u32,
    backend: String,
    driver: String,
    driver_info: String,
    cmae: String,
}

impl AdapterKey {
    fn of(info: &wgpu::AdapterInfo) -> Self {
        Self {
            adapter: info.name.clone(),
            vendor: info.vendor,
            device: info.device,
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            cmae: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn describe(&self) -> String {
        format!("{} ({}, driver {} {}, cmae {})", self.adapter, self.backend, self.driver, self.driver_info, self.cmae)
    }

    /// `<prefix>-<backend>-<vendor>-<device>-<name>.json`: one file per
    /// adapter, so two adapters of one machine do not overwrite each other's results.
    fn file_name(&self, prefix: &str) -> String {
        let slug = slug(&self.adapter, 48);
        format!("{prefix}-{}-{:04x}-{:04x}-{slug}.json", self.backend.to_lowercase(), self.vendor, self.device)
    }
}

/// `text` lowercased for a portable file name: runs of anything but ASCII
/// letters and digits become one `-`, at most `max` characters.
fn slug(text: &str, max: usize) -> String {
    let mut slug = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').chars().take(max).collect()
}

#[derive(Deserialize)]
struct CacheFile<T> {
    format: String,
    key: AdapterKey,
    entries: Vec<T>,
}

/// [`CacheFile`] as written: borrowed, not copied.
#[derive(Serialize)]
struct CacheFileOut<'a, T> {
    format: &'a str,
    key: &'a AdapterKey,
    entries: &'a [T],
}

/// Why an existing file was not used.
enum Unusable {
    /// It could not be read at all (permissions): left alone.
    Unreadable(String),
    /// It is not ours to use: rewritten.
    Foreign(String),
}

pub(crate) struct Cache {
    path: PathBuf,
    key: AdapterKey,
    kind: Kind,
    /// A failed write is reported once, not once per write.
    write_failed: AtomicBool,
}

impl Cache {
    /// The tune cache of this adapter in `dir`.
    pub(crate) fn new(dir: &Path, info: &wgpu::AdapterInfo) -> Self {
        let kind = Kind {
            prefix: "tune".into(),
            format: "cmae-tune-1",
            what: "tune cache",
            without: "tuning results stay in memory",
        };
        Self::of_kind(dir, info, kind)
    }

    /// The list of pipelines `workload` built last time on this adapter.
    pub(crate) fn pipelines(dir: &Path, info: &wgpu::AdapterInfo, workload: &str) -> Self {
        let prefix = format!("pipelines-{}", slug(workload, 32));
        let kind = Kind { prefix, format: "cmae-pipelines-1", what: "pipeline list", without: "starting without it" };
        Self::of_kind(dir, info, kind)
    }

    fn of_kind(dir: &Path, info: &wgpu::AdapterInfo, kind: Kind) -> Self {
        let key = AdapterKey::of(info);
        Self { path: dir.join(key.file_name(&kind.prefix)), key, kind, write_failed: AtomicBool::new(false) }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file's entries; none when it is missing, unreadable or not ours.
    pub(crate) fn load<T: Serialize + DeserializeOwned>(&self) -> Vec<T> {
        let Kind { what, without, .. } = &self.kind;
        match self.read() {
            Ok(entries) => entries,
            Err(Unusable::Unreadable(why)) => {
                log::warn!("cannot read the {what} {}: {why}; {without}", self.path.display());
                Vec::new()
            }
            Err(Unusable::Foreign(why)) => {
                log::warn!("ignoring the {what} {}: {why}; rewriting it", self.path.display());
                self.write::<T>(&[]);
                Vec::new()
            }
        }
    }

    fn read<T: DeserializeOwned>(&self) -> Result<Vec<T>, Unusable> {
        let Kind { format, what, .. } = &self.kind;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Unusable::Unreadable(e.to_string())),
        };
        let file: CacheFile<T> =
            serde_json::from_slice(&bytes).map_err(|e| Unusable::Foreign(format!("it is not a cmae {what} ({e})")))?;
        if file.format != *format {
            return Err(Unusable::Foreign(format!("its format is {:?}, not {format:?}", file.format)));
        }
        if file.key != self.key {
            let why = format!("it was written for {}, not for {}", file.key.describe(), self.key.describe());
            return Err(Unusable::Foreign(why));
        }
        Ok(file.entries)
    }

    /// Writes `table` plus the file's entries for other classes (another
    /// process tuning side by side keeps its results too).
    pub(crate) fn save(&self, table: &BTreeMap<(String, String), TuneEntry>) {
        let mut all = table.clone();
        for entry in self.read::<TuneEntry>().unwrap_or_default() {
            all.entry((entry.decision.clone(), entry.class.clone())).or_insert(entry);
        }
        self.write(&all.into_values().collect::<Vec<_>>());
    }

    /// Replaces the file's entries with `entries`.
    pub(crate) fn write<T: Serialize>(&self, entries: &[T]) {
        if let Err(e) = self.try_write(entries)
            && !self.write_failed.swap(true, Ordering::Relaxed)
        {
            let Kind { what, without, .. } = &self.kind;
            log::warn!("cannot write the {what} {}: {e}; {without}", self.path.display());
        }
    }

    fn try_write<T: Serialize>(&self, entries: &[T]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = CacheFileOut { format: self.kind.format, key: &self.key, entries };
        let text = serde_json::to_vec_pretty(&file)?;
        let tmp = self.path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// `$CMAE_CACHE_DIR`, else `cmae` in the user's cache directory
/// (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS,
/// `%LOCALAPPDATA%` on Windows); `None` when the environment names none.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("CMAE_CACHE_DIR") {
        return Some(dir);
    }
    let user = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Caches"))
    } else {
        // The XDG spec ignores a relative XDG_CACHE_HOME.
        var("XDG_CACHE_HOME").filter(|d| d.is_absolute()).or_else(|| var("HOME").map(|h| h.join(".cache")))
    };
    user.map(|d| d.join("cmae"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::CandidateTime;

    fn info(driver: &str) -> wgpu::AdapterInfo {
        let mut info = wgpu::AdapterInfo::new(wgpu::DeviceType::DiscreteGpu, wgpu::Backend::Vulkan);
        info.name = "Test GPU 9000 (rev. 2)".into();
        (info.vendor, info.device) = (0x10de, 0x2684);
        info.driver = "testdrv".into();
        info.driver_info = driver.into();
        info
    }

    fn entry(class: &str) -> TuneEntry {
        TuneEntry {
            decision: "matmul".into(),
            class: class.into(),
            shape: "m3 n4 k5 z1 nn".into(),
            winner: "tiled".into(),
            candidates: vec![
                CandidateTime { name: "tiled".into(), ms: 1.0, runs: 2 },
                CandidateTime { name: "register".into(), ms: 9.0, runs: 0 },
            ],
            timed_here: true,
            met: true,
        }
    }

    fn table(entries: &[TuneEntry]) -> BTreeMap<(String, String), TuneEntry> {
        entries.iter().map(|e| ((e.decision.clone(), e.class.clone()), e.clone())).collect()
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cmae-tune-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn file_names_are_per_adapter_and_portable() {
        let c = Cache::new(Path::new("/x"), &info("1.0"));
        assert_eq!(c.path(), Path::new("/x/tune-vulkan-10de-2684-test-gpu-9000-rev-2.json"));
    }

    #[test]
    fn entries_round_trip_and_keep_what_another_process_wrote() {
        let dir = temp("round-trip");
        let a = Cache::new(&dir, &info("1.0"));
        assert!(a.load::<TuneEntry>().is_empty(), "no file yet");
        a.save(&table(&[entry("nn m4")]));
        let b = Cache::new(&dir, &info("1.0"));
        let mut loaded = b.load::<TuneEntry>();
        assert_eq!(loaded.len(), 1);
        assert!(!loaded[0].timed_here && !loaded[0].met, "flags are per process, not stored");
        loaded[0].timed_here = true;
        loaded[0].met = true;
        assert_eq!(loaded[0], entry("nn m4"));
        // Another process saves a table without "nn m4": the file keeps it.
        b.save(&table(&[entry("nt m8")]));
        let classes: Vec<String> = a.load::<TuneEntry>().into_iter().map(|e| e.class).collect();
        assert_eq!(classes, ["nn m4", "nt m8"]);
        assert!(std::fs::read_dir(&dir).unwrap().count() == 1, "no temporary file left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_and_foreign_files_are_ignored_and_rewritten() {
        let dir = temp("foreign");
        let ours = Cache::new(&dir, &info("1.0"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(ours.path(), b"{ not json").unwrap();
        assert!(ours.load::<TuneEntry>().is_empty());
        assert!(ours.read::<TuneEntry>().is_ok(), "a corrupt file is rewritten as a valid, empty one");

        // Timed under driver 1.0, read under 2.0: not used, rewritten.
        ours.save(&table(&[entry("nn m4")]));
        let updated = Cache::new(&dir, &info("2.0"));
        assert_eq!(updated.path(), ours.path());
        assert!(updated.load::<TuneEntry>().is_empty(), "another driver's timings are not used");
        assert!(
            matches!(updated.read::<TuneEntry>(), Ok(e) if e.is_empty()),
            "the file now has the new driver's header"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_directory_is_not_an_error() {
        let dir = temp("unwritable");
        std::fs::write(&dir, b"a file where the directory should be").unwrap();
        let c = Cache::new(&dir, &info("1.0"));
        c.save(&table(&[entry("nn m4")]));
        assert!(c.write_failed.load(Ordering::Relaxed));
        assert!(c.load::<TuneEntry>().is_empty());
        let _ = std::fs::remove_file(&dir);
    }
}
