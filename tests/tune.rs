//! The GPU's self-check and tuner on lavapipe: a deliberately wrong kernel version is rejected
//! (and a correct copy accepted, so the check can fail both ways), the choice is cached per
//! adapter and read back, and every version lavapipe cannot run is reported with its reason.
//! One test function, because the cache directory is process-wide (`BGE_CACHE_DIR`).

use bge::backend::gpu::tune::{self, Outcome, Source};
use bge::backend::gpu::{Class, Gpu, GpuOptions, GpuPrecision, Kernel, KernelChoice, Op, Version};

/// `version` with its shader's source edited by `edit` (leaked: versions are `'static`).
fn edited(version: &Version, number: u8, edit: impl Fn(&str) -> String) -> &'static Version {
    let source: &'static str = Box::leak(edit(version.kernel.source).into_boxed_str());
    // A name of its own: pipelines are cached by name.
    let name: &'static str =
        Box::leak(format!("{}_edited_{number}", version.kernel.name).into_boxed_str());
    let kernel: &'static Kernel = Box::leak(Box::new(Kernel {
        name,
        source,
        workgroup_size: version.kernel.workgroup_size,
        params_size: version.kernel.params_size,
    }));
    Box::leak(Box::new(Version {
        op: version.op,
        number,
        kernel,
        tile: version.tile,
        needs: version.needs,
    }))
}

fn gpu(precision: GpuPrecision) -> Gpu {
    Gpu::new(GpuOptions {
        adapter: None,
        precision,
        kernels: KernelChoice::TUNED,
    })
    .expect("a GPU adapter (in CI: lavapipe, apt-get install mesa-vulkan-drivers)")
}

#[test]
fn the_self_check_rejects_a_wrong_kernel_and_the_choice_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary, set before any thread reads the environment.
    unsafe { std::env::set_var("BGE_CACHE_DIR", dir.path()) };
    unsafe { std::env::remove_var(KernelChoice::ENV) };

    for precision in [GpuPrecision::F32, GpuPrecision::F16] {
        let g = gpu(precision);
        let versions = Op::Matmul.versions();
        let tiled = &versions[1];
        // Wrong in the last place of the sum: the last k is left out.
        let drops_last_k = edited(tiled, 8, |s| {
            let wrong = s.replace("gk < p.k", "gk + 1u < p.k");
            assert_ne!(wrong, s, "the edit applies");
            wrong
        });
        // Wrong in one epilogue only: tanh 1% small.
        let wrong_tanh = edited(tiled, 9, |s| {
            let wrong = s.replace(
                "tanh(clamp(x, -15.0, 15.0))",
                "tanh(clamp(x, -15.0, 15.0)) * 0.99",
            );
            assert_ne!(wrong, s, "the edit applies");
            wrong
        });
        let same = edited(tiled, 7, str::to_owned);
        let class = Class::Matmul { n: 96, k: 384 };
        let candidates = [&versions[0], tiled, same, drops_last_k, wrong_tanh];
        let t = tune::tune_among(&g, class, &candidates).unwrap();
        assert_eq!(t.source, Source::Tuned);
        for wrong in [8, 9] {
            assert!(
                matches!(&t.outcomes[&wrong], Outcome::Rejected(why) if why.contains("where version 1 gives")),
                "{precision:?}: version {wrong}: {:?}",
                t.outcomes[&wrong]
            );
        }
        assert!(
            matches!(t.outcomes[&7], Outcome::Timed { .. }),
            "{:?}",
            t.outcomes[&7]
        );
        assert!(
            [1, 2, 7].contains(&t.version),
            "{precision:?} chose {}",
            t.version
        );
        let notes = g.context().notes();
        assert!(
            notes.iter().any(|n| n.contains("matmul 8 disabled"))
                && notes.iter().any(|n| n.contains("matmul 9 disabled")),
            "{notes:?}"
        );
        let lines = t.lines(class).join("\n");
        assert!(
            lines.contains("matmul 8: REJECTED by the self-check"),
            "{lines}"
        );

        // The real ladder: everything lavapipe runs passes; the rest says why it cannot run.
        for class in [
            Class::Matmul { n: 80, k: 64 },
            Class::Attention { heads: 2, d: 32 },
        ] {
            let t = g.tuning(class).unwrap();
            assert_eq!(t.source, Source::Tuned, "{class}");
            for v in class.op().versions() {
                // Lavapipe cannot run the cooperative-matrix versions; an adapter that can (the
                // lent GPU) must see them pass the self-check like every other version.
                match (v.runs_on(g.context(), precision), t.outcomes.get(&v.number)) {
                    (Err(why), Some(Outcome::Unsupported(said))) => assert_eq!(&why, said),
                    (Ok(()), Some(Outcome::Timed { .. })) => {}
                    (_, other) => panic!("{precision:?} {class} version {}: {other:?}", v.number),
                }
                if v.needs.cooperative_matrix && !g.context().has_cooperative_matrix_16x16_f16() {
                    assert!(matches!(
                        t.outcomes.get(&v.number),
                        Some(Outcome::Unsupported(_))
                    ));
                }
            }
            // Cached: a lookup by key gives the same choice.
            let key = tune::cache_key(g.context(), precision, class);
            let cached = tune::cached(&key).expect("cached");
            assert_eq!(cached.source, Source::Cached);
            assert_eq!(cached.version, t.version);
            assert_eq!(cached.outcomes, t.outcomes);
        }
    }
    let file = std::fs::read_to_string(dir.path().join("kernels.json")).unwrap();
    assert!(
        file.contains("matmul n=80 k=64") && file.contains("attention heads=2 d=32"),
        "{file}"
    );
}
