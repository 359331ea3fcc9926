//! What both pool benchmarks need and is not the pool's: a linker that satisfies any module.

use wasmtime::{Engine, Linker, Module, Val};

/// A linker where every import is a host function answering zeros (the add-headers module
/// imports all `env.proxy_*`; the pool must not depend on the ABI layer).
pub fn stub_linker<T: 'static>(engine: &Engine, module: &Module) -> Linker<T> {
    let mut linker = Linker::new(engine);
    for import in module.imports() {
        if let Some(ty) = import.ty().func() {
            let results: Vec<_> = ty.results().collect();
            let r = linker.func_new(import.module(), import.name(), ty.clone(), move |_, _, out| {
                for (o, t) in out.iter_mut().zip(&results) {
                    *o = Val::default_for_ty(t).unwrap_or(Val::I32(0));
                }
                Ok(())
            });
            r.expect("stub import");
        }
    }
    linker
}
