//! Compiling modules once per process, with an optional on-disk cache of compiled code.
//!
//! A cache file is `<module sha256>-wasmtime-<version>-<engine hash>.cwasm` in the cache
//! directory and holds a header (magic, the module's SHA-256, the SHA-256 and length of the
//! serialized code) followed by wasmtime's `Module::serialize` output. It is trusted only when
//! the header matches and the code's SHA-256 is right; wasmtime itself then rejects code from
//! another version or an incompatible engine configuration. Anything else — truncated,
//! corrupted, stale — is ignored (the module is compiled and the file rewritten) and reported
//! in the [`CacheOutcome`], never logged here.
//!
//! This is the one module of the crate that cannot `#![forbid(unsafe_code)]`: loading
//! compiled code back is wasmtime's `unsafe fn Module::deserialize` (it runs the bytes as
//! machine code, which no check of ours can make safe in the compiler's eyes). The crate root
//! denies `unsafe_code`; only `ModuleCompiler::load`, the function making that one call,
//! allows it, with the argument in its SAFETY comment.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// The wasmtime version this crate is built against (the workspace pins it exactly). It names
/// cache files; a wrong value would only cost cache misses, since wasmtime refuses code
/// serialized by another version.
pub const WASMTIME_VERSION: &str = "48.0.8";

const MAGIC: &[u8; 16] = b"ats-wasm cwasm 1";
const HEADER_LEN: usize = 16 + 32 + 32 + 8;

/// What happened with the on-disk cache while a module was compiled. Nothing here is an error
/// for the caller: the module is usable in every case. [`CacheOutcome::problem`] says whether
/// an operator should hear about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// The same bytes were already compiled in this process; that module is shared.
    InProcess,
    /// No cache directory is configured; the module was compiled.
    Disabled,
    /// The compiled code was loaded from this file (integrity and compatibility checked).
    Loaded(PathBuf),
    /// The module was compiled. `rejected` says why an existing cache file was ignored (stale
    /// or corrupt), `write_error` why the fresh code could not be stored.
    Compiled {
        /// The cache file.
        path: PathBuf,
        /// Why an existing file at `path` was not trusted, if there was one.
        rejected: Option<String>,
        /// Why storing the compiled code failed, if it did.
        write_error: Option<String>,
    },
}

impl CacheOutcome {
    /// A one-line description of a cache problem worth a log line (a rejected or unwritable
    /// file), or `None` when all went as expected.
    pub fn problem(&self) -> Option<String> {
        match self {
            CacheOutcome::Compiled { path, rejected, write_error } => {
                let mut parts = Vec::new();
                if let Some(r) = rejected {
                    parts.push(format!("ignored cache file {}: {r}", path.display()));
                }
                if let Some(w) = write_error {
                    parts.push(format!("cannot write cache file {}: {w}", path.display()));
                }
                (!parts.is_empty()).then(|| parts.join("; "))
            }
            _ => None,
        }
    }
}

impl fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheOutcome::InProcess => f.write_str("already compiled in this process"),
            CacheOutcome::Disabled => f.write_str("compiled (no cache directory)"),
            CacheOutcome::Loaded(p) => write!(f, "loaded from cache file {}", p.display()),
            CacheOutcome::Compiled { path, .. } => match self.problem() {
                Some(p) => write!(f, "compiled; {p}"),
                None => write!(f, "compiled and stored in {}", path.display()),
            },
        }
    }
}

/// A compiled module and how it was obtained.
pub struct CompiledModule {
    /// The module, ready to link.
    pub module: Module,
    /// The SHA-256 of the module's bytes, in lowercase hex.
    pub hash: String,
    /// What the disk cache did.
    pub cache: CacheOutcome,
}

/// Compiles each distinct module at most once per process (keyed by the SHA-256 of its bytes)
/// and, with a cache directory, at most once per machine and wasmtime version.
pub struct ModuleCompiler {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    engine_hash: String,
    compiled: Mutex<HashMap<[u8; 32], Module>>,
}

/// Feeds `Hash` output into SHA-256, so the engine's compatibility hash is stable across Rust
/// versions (unlike `DefaultHasher`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ModuleCompiler {
    /// A compiler for `engine`; `cache_dir` (created when first written) enables the disk
    /// cache.
    pub fn new(engine: &Engine, cache_dir: Option<PathBuf>) -> Self {
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_hash = hex(&h.0.finalize()[..8]);
        Self { engine: engine.clone(), cache_dir, engine_hash, compiled: Mutex::new(HashMap::new()) }
    }

    /// The cache file a module with SHA-256 `module_hash` would use, if caching is on.
    pub fn cache_path(&self, module_hash: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{}-wasmtime-{WASMTIME_VERSION}-{}.cwasm", hex(module_hash), self.engine_hash)))
    }

    /// Returns the compiled module for `wasm` (binary or, with wasmtime's `wat` feature, text):
    /// the one already compiled in this process, else a verified cache file, else a fresh
    /// compilation (stored in the cache). Fails only when the module itself is invalid.
    pub fn compile(&self, wasm: &[u8]) -> wasmtime::Result<CompiledModule> {
        let key: [u8; 32] = Sha256::digest(wasm).into();
        let hash = hex(&key);
        // Holding the lock while compiling makes a second caller with the same module wait for
        // the first instead of compiling it again. Compilation happens at start-up and on reloads,
        // never on a net thread.
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = compiled.get(&key) {
            return Ok(CompiledModule { module: m.clone(), hash, cache: CacheOutcome::InProcess });
        }
        let (module, cache) = match self.cache_path(&key) {
            None => (Module::new(&self.engine, wasm)?, CacheOutcome::Disabled),
            Some(path) => match self.load(&path, &key) {
                Ok(Some(m)) => (m, CacheOutcome::Loaded(path)),
                Ok(None) => self.compile_and_store(wasm, &key, path, None)?,
                Err(reason) => self.compile_and_store(wasm, &key, path, Some(reason))?,
            },
        };
        compiled.insert(key, module.clone());
        Ok(CompiledModule { module, hash, cache })
    }

    /// Forgets the in-process compiled modules whose SHA-256 (lowercase hex) `keep` rejects
    /// (their code is freed once nothing else holds them), so replacing modules does not grow
    /// the process without bound.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        compiled.retain(|k, _| keep(&hex(k)));
    }

    fn compile_and_store(
        &self,
        wasm: &[u8],
        key: &[u8; 32],
        path: PathBuf,
        rejected: Option<String>,
    ) -> wasmtime::Result<(Module, CacheOutcome)> {
        let module = Module::new(&self.engine, wasm)?;
        let write_error = store(&module, key, &path).err();
        Ok((module, CacheOutcome::Compiled { path, rejected, write_error }))
    }

    /// `Ok(None)`: no file. `Err`: a file that must not be trusted, and why.
    #[allow(unsafe_code)] // The crate's one `unsafe`: `Module::deserialize`, see SAFETY below.
    fn load(&self, path: &Path, key: &[u8; 32]) -> Result<Option<Module>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let payload = verify(&bytes, key)?;
        // SAFETY: `Module::deserialize` runs the machine code in `payload` as is, so it must be
        // bytes produced by wasmtime's `Module::serialize`. `verify` checked that `payload` has
        // exactly the length and SHA-256 that `store` recorded next to the output of
        // `Module::serialize` for this very module (same module SHA-256), so a truncated or
        // corrupted file never gets here. wasmtime itself rejects (safely, with an error) code
        // serialized by another wasmtime version or for an incompatible engine configuration.
        // The cache directory is as trusted as the module files themselves: whoever can write
        // it could equally replace the `.wasm`.
        match unsafe { Module::deserialize(&self.engine, payload) } {
            Ok(m) => Ok(Some(m)),
            Err(e) => Err(format!("stale or incompatible: {e}")),
        }
    }
}

/// Checks a cache file's header and checksum; returns the serialized code.
fn verify<'a>(bytes: &'a [u8], key: &[u8; 32]) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("truncated ({} bytes)", bytes.len()));
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[..16] != MAGIC {
        return Err("not an ats-wasm cache file (bad magic)".into());
    }
    if &header[16..48] != key {
        return Err("it holds another module".into());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[80..88]);
    let len = u64::from_le_bytes(len);
    if payload.len() as u64 != len {
        return Err(format!("truncated or padded ({} code bytes, header says {len})", payload.len()));
    }
    let sum: [u8; 32] = Sha256::digest(payload).into();
    if header[48..80] != sum {
        return Err("checksum mismatch (corrupt)".into());
    }
    Ok(payload)
}

/// Writes the cache file atomically (temporary file + rename) so readers never see half of it.
fn store(module: &Module, key: &[u8; 32], path: &Path) -> Result<(), String> {
    let payload = module.serialize().map_err(|e| format!("serializing failed: {e}"))?;
    let sum: [u8; 32] = Sha256::digest(&payload).into();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key);
    out.extend_from_slice(&sum);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = path.with_extension(format!("tmp.{}.{nanos}", std::process::id()));
    std::fs::write(&tmp, &out).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}
