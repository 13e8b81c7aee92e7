//! Lets the `llm-pipeline` program find llama.cpp's shared libraries without a library path.
//!
//! With run-time CPU variant choice (ggml's `GGML_BACKEND_DL`), llama.cpp is a set of shared
//! libraries (`libllama.so`, `libggml.so`, `libggml-base.so`, and one `libggml-cpu-*.so` per
//! CPU variant) that the program loads when it starts. `cargo run` finds them through the library
//! path cargo sets; an installed program finds them through its run path, searched in order:
//! 1. `$ORIGIN/../lib/llm-pipeline`: the layout `cargo xtask dist` writes and the container
//!    image uses (`bin/llm-pipeline`, `lib/llm-pipeline/*.so`), relocatable as one folder;
//! 2. `$ORIGIN`: the libraries beside the program;
//! 3. the folder llama.cpp was built into, so that `cargo install --path .` (which builds in
//!    this workspace's `target/`) gives a program that runs as long as that build is kept.
//!
//! The run path is written as `DT_RPATH` (`--disable-new-dtags`), which the dynamic loader also
//! uses for the libraries' own dependencies (`libllama.so` needs `libggml.so`); `DT_RUNPATH`
//! would apply to the program's direct dependencies only.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_BACKENDS_DIR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let mut path = vec![
        "$ORIGIN/../lib/llm-pipeline".to_owned(),
        "$ORIGIN".to_owned(),
    ];
    // llama-cpp-sys-2 exposes `backends_dir` (its OUT_DIR/backends) to direct dependents; the
    // shared libraries are in OUT_DIR/lib.
    if let Some(out) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR")
        .map(std::path::PathBuf::from)
        .and_then(|backends| backends.parent().map(|out| out.join("lib")))
    {
        path.push(out.display().to_string());
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--disable-new-dtags,-rpath,{}",
        path.join(":")
    );
}
