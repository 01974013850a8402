//! Every WGSL shader, in both its f32 and f16 builds, is valid standalone WGSL (naga, no GPU
//! needed; the cooperative-matrix kernels included, which no adapter here can run), its
//! `Params` uniform has the size of its Rust twin, and its workgroup size is the one the
//! dispatch code assumes. Every version of every kernel ladder is registered, numbered in
//! order, in its own file.

use std::collections::BTreeSet;
use std::path::Path;

use bge::backend::gpu::{GpuPrecision, KERNELS, Kernel, Op};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn parse(name: &str, source: &str) -> naga::Module {
    naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)))
}

#[test]
fn every_shader_validates_in_both_builds_and_matches_its_twin() {
    for kernel in KERNELS {
        let stores = kernel.source.matches(Kernel::F32_STORAGE).count();
        assert!(
            stores <= 1,
            "{}: `alias Act` declared {stores} times",
            kernel.name
        );
        for precision in [GpuPrecision::F32, GpuPrecision::F16] {
            let source = kernel.source_for(precision);
            let module = parse(kernel.name, &source);
            Validator::new(ValidationFlags::all(), Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| {
                    panic!(
                        "{} {precision:?}: {}",
                        kernel.name,
                        e.emit_to_string(&source)
                    )
                });
        }
        let module = parse(kernel.name, kernel.source);

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
fn every_ladder_version_has_its_numbered_file_and_header() {
    for op in Op::ALL {
        for v in op.versions() {
            let prefix = format!("{op}_{}_", v.number);
            assert!(v.kernel.name.starts_with(&prefix), "{}", v.kernel.name);
            assert!(
                KERNELS.iter().any(|k| std::ptr::eq(*k, v.kernel)),
                "{} is not in KERNELS",
                v.kernel.name
            );
            let header = format!("ladder, version {}", v.number);
            assert!(
                v.kernel.source.contains(&header),
                "{}: the header says `{header}` and what it improves",
                v.kernel.name
            );
            // Every activation-storing kernel takes f16 activations.
            assert!(
                v.kernel.source.contains(Kernel::F32_STORAGE),
                "{}",
                v.kernel.name
            );
            // Its declared workgroup memory (checked against the adapter's limit) is what the
            // shader declares, in either build.
            for precision in [GpuPrecision::F32, GpuPrecision::F16] {
                let source = v.kernel.source_for(precision);
                let module = parse(v.kernel.name, &source);
                let mut layouter = naga::proc::Layouter::default();
                layouter.update(module.to_ctx()).unwrap();
                let bytes: u32 = module
                    .global_variables
                    .iter()
                    .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
                    .map(|(_, g)| layouter[g.ty].size)
                    .sum();
                assert!(
                    bytes <= v.needs.workgroup_bytes,
                    "{} {precision:?}: {bytes} bytes of workgroup memory, {} declared",
                    v.kernel.name,
                    v.needs.workgroup_bytes
                );
            }
        }
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
fn the_workgroup_sum_is_the_same_in_both_layer_norms() {
    // WGSL has no include: the fused embedding LayerNorm repeats layer_norm.wgsl's reduction,
    // and the two must agree to the bit (tests/kernels.rs checks the results too).
    let source = |name: &str| KERNELS.iter().find(|k| k.name == name).unwrap().source;
    let sum = |name| function(source(name), "workgroup_sum").expect(name);
    assert_eq!(sum("layer_norm"), sum("embed_layer_norm"));
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
