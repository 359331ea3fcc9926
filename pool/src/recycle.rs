//! Recycling a snapshot module's VM: putting a used instance back into the state it was
//! instantiated in (its linear memory's bytes and size, its mutable globals), so that it can
//! serve the next transaction as if it were a fresh instance, without wasmtime's
//! instantiation, the first-use costs of its exports and tables, and the page faults on its
//! copy-on-write memory.
//!
//! What an instance can change, and how each is put back:
//! - linear memory bytes: every host page the process wrote since the memory was mapped (an
//!   anonymous page where the copy-on-write image was, or any present page outside it; found in
//!   `/proc/self/pagemap`: present and not file-backed, or swapped) is copied back from the
//!   pristine contents or zeroed. A page that is absent, or present and still the image's file
//!   page, holds the pristine contents already;
//! - linear memory size: a memory cannot shrink, so an instance whose memory grew is not
//!   recycled (the pool drops it);
//! - mutable globals: set back to their pristine values (the snapshot module exports each of
//!   them under a name of its own, [`export_state`]);
//! - tables and data segments: a snapshot module cannot change them (the snapshot refuses
//!   modules with `table.set`/`grow`/`fill`/`copy`/`init`, `elem.drop`, `data.drop`).
//!
//! The host-side state is the caller's to reset.
#![forbid(unsafe_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use wasmparser::Payload;
use wasmtime::{Extern, Instance, Module, ModuleExport, Store, Val};

use crate::template::Vm;

/// The prefix of the exports [`export_state`] adds.
const PREFIX: &str = "__ats_wasm_state_";

/// `wasm` with one more export per defined memory (`__ats_wasm_state_memory_N`) and per mutable
/// global (`__ats_wasm_state_global_N`), so that a recycler can reach them. Nothing else
/// changes; a module that imports memories or globals is refused.
pub fn export_state(wasm: &[u8]) -> wasmtime::Result<Vec<u8>> {
    let mut memories = 0u32;
    let mut mutable = Vec::new();
    let mut exports: Option<(usize, usize)> = None; // the export section's byte range
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    if !matches!(import?.ty, wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::Tag(_)) {
                        wasmtime::bail!("the module imports a memory, table or global");
                    }
                }
            }
            Payload::MemorySection(r) => memories += r.count(),
            Payload::GlobalSection(r) => {
                for (i, g) in r.into_iter().enumerate() {
                    if g?.ty.mutable {
                        mutable.push(i as u32);
                    }
                }
            }
            Payload::ExportSection(r) => exports = Some((r.range().start, r.range().end)),
            _ => {}
        }
    }
    let (start, end) = exports.ok_or_else(|| wasmtime::Error::msg("the module has no export section"))?;
    let mut section = wasm_encoder_exports(&wasm[start..end])?;
    for m in 0..memories {
        section.push((format!("{PREFIX}memory_{m}"), 2, m));
    }
    for g in mutable {
        section.push((format!("{PREFIX}global_{g}"), 3, g));
    }
    // Re-encode the export section in place: the section's id and size, then its entries.
    let mut body = Vec::new();
    leb(&mut body, section.len() as u64);
    for (name, kind, index) in &section {
        leb(&mut body, name.len() as u64);
        body.extend_from_slice(name.as_bytes());
        body.push(*kind);
        leb(&mut body, u64::from(*index));
    }
    // `start..end` is the section's contents; its header (id byte + size) precedes it.
    let header_start = section_header_start(wasm, start)?;
    let mut out = Vec::with_capacity(wasm.len() + body.len());
    out.extend_from_slice(&wasm[..header_start]);
    out.push(7);
    leb(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out.extend_from_slice(&wasm[end..]);
    Ok(out)
}

/// The existing exports of an export section's contents: `(name, kind byte, index)`.
fn wasm_encoder_exports(contents: &[u8]) -> wasmtime::Result<Vec<(String, u8, u32)>> {
    let reader = wasmparser::ExportSectionReader::new(wasmparser::BinaryReader::new(contents, 0))?;
    let mut out = Vec::new();
    for e in reader {
        let e = e?;
        if e.name.starts_with(PREFIX) {
            wasmtime::bail!("the module already exports {}", e.name);
        }
        let kind = match e.kind {
            wasmparser::ExternalKind::Func => 0,
            wasmparser::ExternalKind::Table => 1,
            wasmparser::ExternalKind::Memory => 2,
            wasmparser::ExternalKind::Global => 3,
            wasmparser::ExternalKind::Tag => 4,
            _ => wasmtime::bail!("unsupported export kind of {}", e.name),
        };
        out.push((e.name.to_string(), kind, e.index));
    }
    Ok(out)
}

/// Where the header of the section whose contents start at `contents` begins: one id byte and a
/// LEB128 size of 1 to 5 bytes precede the contents.
fn section_header_start(wasm: &[u8], contents: usize) -> wasmtime::Result<usize> {
    for size_len in 1..=5usize {
        let Some(id_at) = contents.checked_sub(size_len + 1) else { break };
        if wasm[id_at] != 7 {
            continue;
        }
        let size_bytes = &wasm[id_at + 1..contents];
        // A valid LEB128: every byte but the last has its high bit set.
        let (last, rest) = size_bytes.split_last().expect("1..=5 bytes");
        if last & 0x80 == 0 && rest.iter().all(|b| b & 0x80 != 0) {
            return Ok(id_at);
        }
    }
    wasmtime::bail!("cannot find the export section's header")
}

fn leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// One memory's pristine contents, sparse: the host pages that are not all zero.
struct PristineMemory {
    export: ModuleExport,
    /// The memory's size in bytes.
    len: usize,
    /// Per host page: its index in `pages`, or `u32::MAX` for a page of zeros.
    index: Vec<u32>,
    pages: Vec<u8>,
}

/// The pristine state of a snapshot module's instances (read from one instance before any guest
/// code ran in it) and how to put a used instance back into it ([`Pristine::reset`]).
pub struct Pristine {
    memories: Vec<PristineMemory>,
    globals: Vec<(ModuleExport, Val)>,
}

/// Why an instance was not recycled.
#[derive(Debug)]
pub enum RecycleError {
    /// Its linear memory grew (a memory cannot shrink).
    Grown,
    /// Which pages it wrote could not be read (no `/proc/self/pagemap`).
    NoPagemap(String),
    /// A memory or global export is missing (never for a module from [`export_state`]).
    Missing,
}

impl std::fmt::Display for RecycleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecycleError::Grown => write!(f, "its linear memory grew"),
            RecycleError::NoPagemap(e) => write!(f, "cannot read /proc/self/pagemap: {e}"),
            RecycleError::Missing => write!(f, "a memory or global export is missing"),
        }
    }
}

impl std::error::Error for RecycleError {}

/// The process's page map and host page size, opened once.
fn pagemap() -> Result<&'static (File, usize), RecycleError> {
    static PAGEMAP: OnceLock<Result<(File, usize), String>> = OnceLock::new();
    PAGEMAP
        .get_or_init(|| {
            let file = File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
            Ok((file, host_page_size()?))
        })
        .as_ref()
        .map_err(|e| RecycleError::NoPagemap(e.clone()))
}

/// The host page size, from the auxiliary vector (`AT_PAGESZ`).
fn host_page_size() -> Result<usize, String> {
    let auxv = std::fs::read("/proc/self/auxv").map_err(|e| format!("/proc/self/auxv: {e}"))?;
    let word = std::mem::size_of::<usize>();
    for pair in auxv.chunks_exact(2 * word) {
        let (k, v) = pair.split_at(word);
        let k = usize::from_ne_bytes(k.try_into().expect("one word"));
        let v = usize::from_ne_bytes(v.try_into().expect("one word"));
        if k == 6 {
            // AT_PAGESZ
            return Ok(v);
        }
    }
    Err("no AT_PAGESZ in /proc/self/auxv".into())
}

impl Pristine {
    /// Reads the pristine state of `vm`, an instance of a module from [`export_state`] in which
    /// no guest code has run yet.
    pub fn read<T>(module: &Module, vm: &mut Vm<T>) -> Result<Self, RecycleError> {
        let &(_, page) = pagemap()?;
        let mut memories = Vec::new();
        let mut globals = Vec::new();
        for export in module.exports() {
            let Some(kind) = export.name().strip_prefix(PREFIX) else { continue };
            let index = module.get_export_index(export.name()).ok_or(RecycleError::Missing)?;
            match vm.instance.get_module_export(&mut vm.store, &index) {
                Some(Extern::Memory(m)) if kind.starts_with("memory_") => {
                    let data = m.data(&vm.store);
                    let mut p = PristineMemory { export: index, len: data.len(), index: Vec::new(), pages: Vec::new() };
                    for chunk in data.chunks(page) {
                        if chunk.iter().all(|&b| b == 0) {
                            p.index.push(u32::MAX);
                        } else {
                            p.index.push((p.pages.len() / page) as u32);
                            p.pages.extend_from_slice(chunk);
                            p.pages.resize(p.pages.len().next_multiple_of(page), 0);
                        }
                    }
                    memories.push(p);
                }
                Some(Extern::Global(g)) if kind.starts_with("global_") => globals.push((index, g.get(&mut vm.store))),
                _ => return Err(RecycleError::Missing),
            }
        }
        Ok(Self { memories, globals })
    }

    /// Bytes of pristine memory contents kept (the pages that are not all zero).
    pub fn kept_bytes(&self) -> usize {
        self.memories.iter().map(|m| m.pages.len()).sum()
    }

    /// Puts `vm` back into the pristine state: memory pages it wrote, memory size checked,
    /// mutable globals. Returns how many host pages were restored.
    pub fn reset<T>(&self, store: &mut Store<T>, instance: Instance) -> Result<usize, RecycleError> {
        let &(ref file, page) = pagemap()?;
        let mut restored = 0;
        let mut entries = Vec::new();
        for p in &self.memories {
            let Some(Extern::Memory(m)) = instance.get_module_export(&mut *store, &p.export) else {
                return Err(RecycleError::Missing);
            };
            if m.data_size(&*store) != p.len {
                return Err(RecycleError::Grown);
            }
            let base = m.data_ptr(&*store) as usize;
            if !base.is_multiple_of(page) {
                return Err(RecycleError::NoPagemap("the memory is not page-aligned".into()));
            }
            let n = p.len.div_ceil(page);
            entries.resize(n * 8, 0u8);
            file.read_exact_at(&mut entries, (base / page * 8) as u64)
                .map_err(|e| RecycleError::NoPagemap(e.to_string()))?;
            let data = m.data_mut(&mut *store);
            for (i, e) in entries.chunks_exact(8).enumerate() {
                let e = u64::from_ne_bytes(e.try_into().expect("8 bytes"));
                let present = e >> 63 & 1 == 1;
                let swapped = e >> 62 & 1 == 1;
                let file_page = e >> 61 & 1 == 1;
                if !(swapped || (present && !file_page)) {
                    continue;
                }
                let at = i * page;
                let dst = &mut data[at..(at + page).min(p.len)];
                match p.index[i] {
                    u32::MAX => dst.fill(0),
                    k => {
                        let from = k as usize * page;
                        dst.copy_from_slice(&p.pages[from..from + dst.len()]);
                    }
                }
                restored += 1;
            }
        }
        for (export, value) in &self.globals {
            let Some(Extern::Global(g)) = instance.get_module_export(&mut *store, export) else {
                return Err(RecycleError::Missing);
            };
            g.set(&mut *store, *value).map_err(|_| RecycleError::Missing)?;
        }
        Ok(restored)
    }
}
