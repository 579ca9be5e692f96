//! Embeds every `fixtures/vectors/*.vec` for `vectors::FILES`, listed from the directory
//! at build time: a new file is run by the host test and the QEMU run without editing a
//! list.
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dir = manifest.join("../../fixtures/vectors");
    // A directory's mtime changes when a file is added or removed; each file is listed
    // too so an edit rebuilds.
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("read fixtures/vectors").path())
        .filter(|p| p.extension().is_some_and(|e| e == "vec"))
        .collect();
    files.sort();
    let mut code = String::from("&[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_name().expect("file name").to_string_lossy().into_owned();
        let abs = path.canonicalize().expect("canonical vector path");
        writeln!(code, "    ({name:?}, include_str!({:?})),", abs.display().to_string()).unwrap();
    }
    code.push_str("]\n");
    std::fs::write(out.join("vector_files.rs"), code).expect("write vector_files.rs");
}
