//! Every WGSL shader is valid standalone WGSL (naga, no GPU needed), its `Params` uniform has
//! the size of its Rust twin, and its workgroup size is the one the dispatch code assumes.

use std::collections::BTreeSet;
use std::path::Path;

use bge::backend::gpu::KERNELS;
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(name: &str, source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)))
}

#[test]
fn every_shader_validates_and_matches_its_twin() {
    for kernel in KERNELS {
        let module = parse(kernel.name, kernel.source);
        Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", kernel.name, e.emit_to_string(kernel.source)));

        let params = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some("Params"))
            .unwrap_or_else(|| panic!("{}: no `struct Params`", kernel.name));
        let naga::TypeInner::Struct { span, .. } = params.1.inner else {
            panic!("{}: Params is not a struct", kernel.name);
        };
        assert_eq!(
            span as usize, kernel.params_size,
            "{}: Params size vs Rust twin",
            kernel.name
        );

        let [entry] = &module.entry_points[..] else {
            panic!("{}: expected exactly one entry point", kernel.name);
        };
        assert_eq!(entry.name, "main", "{}", kernel.name);
        assert_eq!(
            entry.workgroup_size, kernel.workgroup_size,
            "{}: workgroup size",
            kernel.name
        );
    }
}

#[test]
fn every_shader_file_is_registered_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let registered: Vec<String> = KERNELS.iter().map(|k| format!("{}.wgsl", k.name)).collect();
    let unique: BTreeSet<String> = registered.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        registered.len(),
        "a kernel is registered twice"
    );
    assert_eq!(on_disk, unique, "shaders/ and gpu::KERNELS disagree");
    for kernel in KERNELS {
        let file = std::fs::read_to_string(dir.join(format!("{}.wgsl", kernel.name))).unwrap();
        assert_eq!(
            file, kernel.source,
            "{}: KERNEL.source is not its file",
            kernel.name
        );
    }
}

/// The text of `fn name(...) { ... }` in a shader (up to the first closing brace at column 0).
fn function(source: &str, name: &str) -> Option<String> {
    let start = source.find(&format!("fn {name}("))?;
    let end = source[start..].find("\n}\n")? + start + 3;
    // Include the comment block above the function.
    let head = source[..start].rfind("\n\n").map_or(0, |i| i + 2);
    Some(source[head..end].to_owned())
}

#[test]
fn the_activation_functions_are_the_same_in_every_matmul() {
    // WGSL has no include: the GELU approximation is repeated in each matmul shader, and this
    // keeps the copies identical.
    let matmuls: Vec<_> = KERNELS
        .iter()
        .filter(|k| k.name.starts_with("matmul"))
        .collect();
    assert!(matmuls.len() >= 3);
    for name in ["gelu", "activate"] {
        let first = function(matmuls[0].source, name).unwrap();
        for k in &matmuls[1..] {
            let other =
                function(k.source, name).unwrap_or_else(|| panic!("{} has no fn {name}", k.name));
            assert_eq!(
                first, other,
                "fn {name} differs between {} and {}",
                matmuls[0].name, k.name
            );
        }
    }
}
