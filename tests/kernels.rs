//! Every operation of every fast backend (the SIMD CPU backend on each instruction set this CPU
//! has, on 1 and 3 threads; the WGSL backend in f32 and f16, with every version of its kernel
//! ladders that the adapter runs) against the reference backend, on random inputs with awkward
//! shapes: sizes that are multiples of no tile, single rows, single-token sequences, long rows.
//! In CI the GPU is Mesa's lavapipe; a missing adapter fails these tests, and the only versions
//! allowed to be missing are the cooperative-matrix ones (lavapipe has none).

mod common;

use bge::backend::cpu::simd::Isa;
use bge::backend::cpu::{Cpu, CpuPrecision};
use bge::backend::gpu::{Gpu, GpuOptions, GpuPrecision, KernelChoice, Op};
use bge::backend::reference::Reference;
use bge::backend::{Activation, Backend, Dtype, Kernels, PackedBatch};
use bge::internals::SplitMix64;
use common::{Tolerance, assert_close, to_f64, tol};

/// Deterministic values uniform in `[-scale, scale)`.
fn random(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| (rng.unit_f32() * 2.0 - 1.0) * scale)
        .collect()
}

/// A backend under test, its name, and what it rounds its operands to.
struct Case<B> {
    name: String,
    backend: B,
    /// Weights (and on the GPU in f16, activations) as this backend stores them, so that the
    /// reference is given the same values; it also sets the tolerance (f16's for f16).
    dtype: Dtype,
}

impl<B> Case<B> {
    /// `tol`, or the f16 kernel tolerance where this backend stores f16 results.
    fn tolerance(&self, tol: Tolerance) -> Tolerance {
        match self.dtype {
            Dtype::F16 => Tolerance::KERNEL_F16,
            _ => tol,
        }
    }

    /// `values` as the backend holds them once uploaded: the reference's input.
    fn stored(&self, values: &[f32]) -> Vec<f32> {
        stored(values, self.dtype)
    }
}

fn gpu(kernels: KernelChoice, dtype: Dtype) -> bge::Result<Gpu> {
    Gpu::new(GpuOptions {
        adapter: None,
        precision: GpuPrecision::try_from(dtype).unwrap(),
        kernels,
    })
}

/// The GPU in f32 and f16 with every version of `op`'s ladder (the other op at version 1);
/// `None` for the versions of neither: each precision once, with tuned kernels. A version the
/// adapter cannot run must be a cooperative-matrix one, and is reported, not tested.
fn gpu_cases_of(op: Option<Op>) -> Vec<Case<Gpu>> {
    let mut cases = Vec::new();
    for dtype in [Dtype::F32, Dtype::F16] {
        let choices: Vec<(String, KernelChoice)> = match op {
            None => vec![(String::new(), KernelChoice::TUNED)],
            Some(op) => op
                .versions()
                .iter()
                .map(|v| {
                    let mut choice = KernelChoice::all(1);
                    match op {
                        Op::Matmul => choice.matmul = Some(v.number),
                        Op::Attention => choice.attention = Some(v.number),
                    }
                    (format!(" {op} {}", v.number), choice)
                })
                .collect(),
        };
        for (version, kernels) in choices {
            let name = format!("gpu {dtype}{version}");
            match gpu(kernels, dtype) {
                Ok(backend) => cases.push(Case {
                    name,
                    backend,
                    dtype,
                }),
                Err(e) => {
                    let message = e.to_string();
                    assert!(
                        message.contains("cooperative matrices") || message.contains("f16 storage"),
                        "{name}: {message} (a GPU adapter is needed: in CI, lavapipe from apt-get install mesa-vulkan-drivers)"
                    );
                    eprintln!("{name}: not run on this adapter: {message}");
                }
            }
        }
    }
    assert!(!cases.is_empty(), "no GPU case runs");
    cases
}

fn gpu_cases() -> Vec<Case<Gpu>> {
    gpu_cases_of(None)
}

/// Every instruction set this CPU runs (AVX-512, AVX2, NEON, scalar), on one thread and on
/// three (an odd count, so work never splits evenly).
fn cpu_cases() -> Vec<Case<Cpu>> {
    Isa::available()
        .into_iter()
        .flat_map(|isa| [1, 3].map(|threads| (isa, threads)))
        .map(|(isa, threads)| Case {
            name: format!("cpu {} x{threads}", isa.name()),
            backend: Cpu::with_isa(Some(threads), isa).unwrap(),
            dtype: Dtype::F32,
        })
        .collect()
}

/// Rounds weights to what a backend storing them in `dtype` holds.
fn stored(w: &[f32], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => w.to_vec(),
        Dtype::F16 => w.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        Dtype::Bf16 => w
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
    }
}

fn matmul<B: Backend>(
    b: &B,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    bias: &[f32],
    act: Activation,
) -> Vec<f32> {
    let n = bias.len();
    let xt = b.tensor(x, m, k).unwrap();
    let lin = b.linear(w, bias, n, k).unwrap();
    b.to_host(&b.matmul(&xt, &lin, act).unwrap()).unwrap()
}

fn check<B: Backend>(
    cases: &[Case<B>],
    what: &str,
    tol: Tolerance,
    run: impl Fn(&Case<B>) -> (Vec<f32>, Vec<f32>),
) {
    for case in cases {
        let (got, want) = run(case);
        assert_close(
            &format!("{} {what}", case.name),
            &to_f64(&got),
            &to_f64(&want),
            case.tolerance(tol),
        );
    }
}

fn matmul_with_every_activation_and_awkward_shape_on<B: Backend>(cases: &[Case<B>]) {
    let shapes = [
        (1, 1, 1),
        (1, 37, 5),
        (3, 5, 64),
        (67, 33, 129),
        (130, 65, 17),
        (64, 64, 64),
        (7, 300, 100),
        (200, 3, 1030),
        (5, 9, 4099),
        (3, 40, 8200),
        (31, 1152, 384),
        (100, 768, 96),
        (4096, 70, 64),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let x = random(m * k, 1.0, 10 + i as u64);
        let w = random(n * k, 1.0 / (k as f32).sqrt(), 20 + i as u64);
        let bias = random(n, 0.5, 30 + i as u64);
        for act in [
            Activation::None,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Relu,
        ] {
            check(
                cases,
                &format!("matmul {m}x{n}x{k} {act:?}"),
                tol::KERNEL_F32,
                |c| {
                    let (x_ref, w_ref) = (c.stored(&x), c.stored(&w));
                    (
                        matmul(&c.backend, &x, m, k, &w, &bias, act),
                        matmul(&Reference, &x_ref, m, k, &w_ref, &bias, act),
                    )
                },
            );
        }
    }
}

#[test]
fn matmul_with_every_activation_and_awkward_shape() {
    matmul_with_every_activation_and_awkward_shape_on(&cpu_cases());
    matmul_with_every_activation_and_awkward_shape_on(&gpu_cases_of(Some(Op::Matmul)));
}

fn gelu_matches_erf_across_its_range_on<B: Backend>(cases: &[Case<B>]) {
    // x from -12 to 12 through a 1x1 identity layer; tails included, where 1 + erf(x) cancels.
    let m = 2401;
    let x: Vec<f32> = (0..m).map(|i| -12.0 + i as f32 * 0.01).collect();
    check(cases, "gelu", tol::GELU, |c| {
        (
            matmul(&c.backend, &x, m, 1, &[1.0], &[0.0], Activation::Gelu),
            matmul(
                &Reference,
                &c.stored(&x),
                m,
                1,
                &[1.0],
                &[0.0],
                Activation::Gelu,
            ),
        )
    });
}

/// The CPU's AVX-512 BF16 linear layers against the reference given the same bf16-rounded
/// weights and inputs: what is left is f32 summation, so the f32 tolerance holds. Where the
/// CPU lacks the instructions, `--dtype bf16` must be a clear error instead.
#[test]
fn bf16_matmul_on_the_cpu() {
    let cases: Vec<Case<Cpu>> =
        match Cpu::new(Some(3)).and_then(|c| c.with_precision(CpuPrecision::Bf16)) {
            Ok(backend) => vec![Case {
                name: "cpu bf16 x3".into(),
                backend,
                dtype: Dtype::Bf16,
            }],
            Err(e) => {
                assert!(e.to_string().contains("AVX-512 BF16"), "{e}");
                return;
            }
        };
    let shapes = [
        (1, 1, 1),
        (1, 37, 5),
        (67, 33, 129),
        (13, 47, 385),
        (31, 1152, 384),
        (3, 40, 8201),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let x = random(m * k, 1.0, 40 + i as u64);
        let w = random(n * k, 1.0 / (k as f32).sqrt(), 50 + i as u64);
        let bias = random(n, 0.5, 60 + i as u64);
        for act in [
            Activation::None,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Relu,
        ] {
            check(
                &cases,
                &format!("bf16 matmul {m}x{n}x{k} {act:?}"),
                tol::KERNEL_F32,
                |c| {
                    let (x_ref, w_ref) = (c.stored(&x), c.stored(&w));
                    (
                        matmul(&c.backend, &x, m, k, &w, &bias, act),
                        matmul(&Reference, &x_ref, m, k, &w_ref, &bias, act),
                    )
                },
            );
        }
    }
}

/// Empty matrices on the CPU: no rows, no outputs, or no inputs (the bias alone).
#[test]
fn cpu_matmul_of_empty_shapes() {
    for c in cpu_cases() {
        for (m, n, k) in [(0, 5, 3), (4, 0, 3), (3, 5, 0)] {
            let bias = random(n, 0.5, 7);
            let got = matmul(
                &c.backend,
                &random(m * k, 1.0, 8),
                m,
                k,
                &random(n * k, 1.0, 9),
                &bias,
                Activation::None,
            );
            let want: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
            assert_eq!(got, want, "{} [{m}, {n}, {k}]", c.name);
        }
    }
}

#[test]
fn gelu_matches_erf_across_its_range() {
    gelu_matches_erf_across_its_range_on(&cpu_cases());
    gelu_matches_erf_across_its_range_on(&gpu_cases_of(Some(Op::Matmul)));
}

fn layer_norm<B: Backend>(
    b: &B,
    x: &[f32],
    res: Option<&[f32]>,
    g: &[f32],
    beta: &[f32],
    rows: usize,
) -> Vec<f32> {
    let cols = g.len();
    let xt = b.tensor(x, rows, cols).unwrap();
    let rt = res.map(|r| b.tensor(r, rows, cols).unwrap());
    let (gt, bt) = (
        b.tensor(g, 1, cols).unwrap(),
        b.tensor(beta, 1, cols).unwrap(),
    );
    b.to_host(&b.layer_norm(&xt, rt.as_ref(), &gt, &bt, 1e-5).unwrap())
        .unwrap()
}

fn layer_norm_with_and_without_residual_on<B: Backend>(cases: &[Case<B>]) {
    for (i, &(rows, cols)) in [(1, 1), (1, 7), (5, 33), (3, 1024), (2, 4099), (300, 32)]
        .iter()
        .enumerate()
    {
        let seed = 100 + i as u64;
        // An offset mean, as real activations have, exercises the two-pass variance.
        let x: Vec<f32> = random(rows * cols, 1.0, seed)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        let r = random(rows * cols, 1.0, seed + 1);
        let g: Vec<f32> = random(cols, 0.2, seed + 2)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let beta = random(cols, 0.2, seed + 3);
        for res in [None, Some(&r[..])] {
            check(
                cases,
                &format!("layer_norm {rows}x{cols} residual={}", res.is_some()),
                tol::KERNEL_F32,
                |c| {
                    (
                        layer_norm(&c.backend, &x, res, &g, &beta, rows),
                        layer_norm(
                            &Reference,
                            &c.stored(&x),
                            res.map(|r| c.stored(r)).as_deref(),
                            &c.stored(&g),
                            &c.stored(&beta),
                            rows,
                        ),
                    )
                },
            );
        }
    }
}

#[test]
fn layer_norm_with_and_without_residual() {
    layer_norm_with_and_without_residual_on(&cpu_cases());
    layer_norm_with_and_without_residual_on(&gpu_cases());
}

fn packed(lens: &[usize]) -> PackedBatch {
    let mut b = PackedBatch {
        offsets: vec![0],
        ..PackedBatch::default()
    };
    for (s, &n) in lens.iter().enumerate() {
        for t in 0..n {
            b.ids.push(((s * 7 + t * 13) % 50) as u32);
            b.type_ids.push((t % 2) as u32);
            b.position_ids.push(t as u32);
        }
        b.offsets.push(b.ids.len() as u32);
    }
    b
}

fn attention<B: Backend>(b: &B, qkv: &[f32], lens: &[usize], h: usize, heads: usize) -> Vec<f32> {
    let batch = packed(lens);
    let t = b.tensor(qkv, batch.tokens(), 3 * h).unwrap();
    b.to_host(&b.attention(&t, &b.batch(&batch).unwrap(), heads).unwrap())
        .unwrap()
}

fn attention_stays_inside_each_sequence_on<B: Backend>(cases: &[Case<B>]) {
    let configs: [(&[usize], usize, usize); 9] = [
        (&[1], 4, 1),
        (&[1, 7, 70], 8, 2),
        (&[65, 3], 32, 4),
        (&[129], 64, 1),
        (&[17, 1, 200], 128, 1),
        (&[33, 40], 384, 12),
        (&[2, 2, 2, 2, 90], 48, 3),
        // Ten heads of one sequence: the CPU's groups of heads come out uneven.
        (&[50], 160, 10),
        // Either side of the CPU's whole-sequence query block.
        (&[192, 193], 64, 2),
    ];
    for (i, &(lens, h, heads)) in configs.iter().enumerate() {
        let tokens: usize = lens.iter().sum();
        // Scores of a few units: softmax neither uniform nor one-hot.
        let qkv = random(tokens * 3 * h, 2.0, 200 + i as u64);
        check(
            cases,
            &format!("attention {lens:?} h={h} heads={heads}"),
            tol::KERNEL_F32,
            |c| {
                (
                    attention(&c.backend, &qkv, lens, h, heads),
                    attention(&Reference, &c.stored(&qkv), lens, h, heads),
                )
            },
        );
    }
}

#[test]
fn attention_stays_inside_each_sequence() {
    attention_stays_inside_each_sequence_on(&cpu_cases());
    attention_stays_inside_each_sequence_on(&gpu_cases_of(Some(Op::Attention)));
}

#[test]
fn attention_refuses_head_sizes_it_cannot_hold() {
    let g = gpu(KernelChoice::TUNED, Dtype::F32).unwrap();
    let batch = packed(&[3]);
    for (h, heads) in [(6, 1), (132, 1)] {
        let t = g.tensor(&random(3 * 3 * h, 1.0, 1), 3, 3 * h).unwrap();
        let err = g
            .attention(&t, &g.batch(&batch).unwrap(), heads)
            .err()
            .expect("refused");
        assert!(
            matches!(&err, bge::Error::Shape(m) if m.contains("is not supported by this backend")),
            "{err}"
        );
    }
}

fn embed<B: Backend>(b: &B, lens: &[usize], h: usize) -> Vec<f32> {
    let batch = packed(lens);
    let word = b.table(&random(50 * h, 1.0, 1), 50, h).unwrap();
    let pos = b.table(&random(300 * h, 1.0, 2), 300, h).unwrap();
    let ty = b.table(&random(2 * h, 1.0, 3), 2, h).unwrap();
    b.to_host(
        &b.embed(&b.batch(&batch).unwrap(), &word, &pos, &ty)
            .unwrap(),
    )
    .unwrap()
}

fn embedding_gather_and_sum_on<B: Backend>(cases: &[Case<B>]) {
    for (lens, h) in [(&[1][..], 1), (&[3, 250][..], 33), (&[7][..], 384)] {
        check(
            cases,
            &format!("embed {lens:?} h={h}"),
            tol::KERNEL_F32,
            |c| (embed(&c.backend, lens, h), embed(&Reference, lens, h)),
        );
    }
}

#[test]
fn embedding_gather_and_sum() {
    embedding_gather_and_sum_on(&cpu_cases());
    embedding_gather_and_sum_on(&gpu_cases());
}

/// `embed_layer_norm` and `layer_norm(embed)`: the fused operation's result, and its bits.
fn embed_layer_norm<B: Backend>(b: &B, lens: &[usize], h: usize, fused: bool) -> Vec<f32> {
    let batch = b.batch(&packed(lens)).unwrap();
    let word = b.table(&random(50 * h, 1.0, 1), 50, h).unwrap();
    let pos = b.table(&random(300 * h, 1.0, 2), 300, h).unwrap();
    let ty = b.table(&random(2 * h, 1.0, 3), 2, h).unwrap();
    let gamma: Vec<f32> = random(h, 0.2, 4).iter().map(|v| v + 1.0).collect();
    let (g, beta) = (
        b.tensor(&gamma, 1, h).unwrap(),
        b.tensor(&random(h, 0.2, 5), 1, h).unwrap(),
    );
    let out = if fused {
        b.embed_layer_norm(&batch, &word, &pos, &ty, &g, &beta, 1e-12)
            .unwrap()
    } else {
        let sum = b.embed(&batch, &word, &pos, &ty).unwrap();
        b.layer_norm(&sum, None, &g, &beta, 1e-12).unwrap()
    };
    b.to_host(&out).unwrap()
}

fn embedding_sum_and_layer_norm_fused_on<B: Backend>(cases: &[Case<B>]) {
    for (lens, h) in [
        (&[1][..], 1),
        (&[3, 250][..], 33),
        (&[7][..], 384),
        (&[2, 5][..], 1024),
    ] {
        check(
            cases,
            &format!("embed_layer_norm {lens:?} h={h}"),
            tol::KERNEL_F32,
            |c| {
                // The reference rounds gamma and beta as the backend stores them.
                let want = {
                    let r = &Reference;
                    let batch = r.batch(&packed(lens)).unwrap();
                    let table = |n, seed| r.table(&random(n * h, 1.0, seed), n, h).unwrap();
                    let gamma: Vec<f32> = random(h, 0.2, 4).iter().map(|v| v + 1.0).collect();
                    let (g, beta) = (
                        r.tensor(&c.stored(&gamma), 1, h).unwrap(),
                        r.tensor(&c.stored(&random(h, 0.2, 5)), 1, h).unwrap(),
                    );
                    let sum = r.embed(&batch, &table(50, 1), &table(300, 2), &table(2, 3));
                    let out = r.layer_norm(&sum.unwrap(), None, &g, &beta, 1e-12).unwrap();
                    r.to_host(&out).unwrap()
                };
                (embed_layer_norm(&c.backend, lens, h, true), want)
            },
        );
    }
}

#[test]
fn embedding_sum_and_layer_norm_fused() {
    embedding_sum_and_layer_norm_fused_on(&cpu_cases());
    embedding_sum_and_layer_norm_fused_on(&gpu_cases());
    // In f32 the GPU's fused kernel gives exactly the bits of its two kernels in a row.
    let g = gpu(KernelChoice::TUNED, Dtype::F32).unwrap();
    for (lens, h) in [(&[3, 250][..], 33), (&[2, 5][..], 1024)] {
        let fused = embed_layer_norm(&g, lens, h, true);
        let apart = embed_layer_norm(&g, lens, h, false);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fused), bits(&apart), "{lens:?} h={h}");
    }
}

#[test]
fn a_word_table_larger_than_a_binding_is_gathered_on_the_host() {
    let g = gpu(KernelChoice::TUNED, Dtype::F32).unwrap();
    let h = 64;
    let limit = g.context().limits.max_storage_buffer_binding_size as usize;
    let rows = limit / 4 / h + 1;
    if rows * h > 200_000_000 {
        // A 2 GiB binding (e.g. NVIDIA): every BGE table fits, and this case cannot arise.
        let small = g.table(&random(64 * h, 1.0, 1), 64, h).unwrap();
        assert!(matches!(
            small,
            bge::backend::gpu::GpuTable::Resident { .. }
        ));
        eprintln!("binding limit {limit} B: no table of this test's size can exceed it");
        return;
    }
    let words = random(rows * h, 1.0, 77);
    let batch = PackedBatch {
        ids: vec![0, rows as u32 - 1, 5],
        type_ids: vec![0; 3],
        position_ids: vec![0, 1, 2],
        offsets: vec![0, 3],
    };
    let word = g.table(&words, rows, h).unwrap();
    assert!(
        matches!(word, bge::backend::gpu::GpuTable::Host { .. }),
        "kept on the host"
    );
    let pos = g.table(&[0.5; 3 * 64], 3, h).unwrap();
    let ty = g.table(&[0.25; 64], 1, h).unwrap();
    let got = g
        .to_host(
            &g.embed(&g.batch(&batch).unwrap(), &word, &pos, &ty)
                .unwrap(),
        )
        .unwrap();
    let want: Vec<f32> = batch
        .ids
        .iter()
        .flat_map(|&id| {
            words[id as usize * h..(id as usize + 1) * h]
                .iter()
                .map(|w| w + 0.75)
        })
        .collect();
    assert_close(
        "host-gathered embeddings",
        &to_f64(&got),
        &to_f64(&want),
        tol::KERNEL_F32,
    );
    // The fused embedding LayerNorm gathers the same way: the bits of its two kernels.
    let (gamma, beta) = (
        g.tensor(&[1.5; 64], 1, h).unwrap(),
        g.tensor(&[0.25; 64], 1, h).unwrap(),
    );
    let on = g.batch(&batch).unwrap();
    let fused = g
        .embed_layer_norm(&on, &word, &pos, &ty, &gamma, &beta, 1e-12)
        .unwrap();
    let sum = g.embed(&on, &word, &pos, &ty).unwrap();
    let apart = g.layer_norm(&sum, None, &gamma, &beta, 1e-12).unwrap();
    assert_eq!(g.to_host(&fused).unwrap(), g.to_host(&apart).unwrap());
}

fn pooling_input(lens: &[usize], cols: usize) -> Vec<f32> {
    random(lens.iter().sum::<usize>() * cols, 1.0, 9)
}

fn pooling<B: Backend>(b: &B, lens: &[usize], cols: usize) -> Vec<f32> {
    pooling_of(b, &pooling_input(lens, cols), lens, cols)
}

fn pooling_of<B: Backend>(b: &B, x: &[f32], lens: &[usize], cols: usize) -> Vec<f32> {
    let batch = packed(lens);
    let x = b.tensor(x, batch.tokens(), cols).unwrap();
    let on = b.batch(&batch).unwrap();
    let mut out = b.to_host(&b.mean_pool(&x, &on).unwrap()).unwrap();
    out.extend(
        b.to_host(&b.gather_rows(&x, &batch.first_rows()).unwrap())
            .unwrap(),
    );
    let all_but_first: Vec<u32> = (0..batch.tokens() as u32)
        .filter(|t| !batch.offsets.contains(t))
        .collect();
    out.extend(
        b.to_host(&b.gather_rows(&x, &all_but_first).unwrap())
            .unwrap(),
    );
    out.extend(b.to_host(&b.l2_normalize(&x).unwrap()).unwrap());
    out.extend(
        b.to_host(&b.mean_pool_normalized(&x, &on).unwrap())
            .unwrap(),
    );
    out
}

fn pooling_gathering_and_normalisation_on<B: Backend>(cases: &[Case<B>]) {
    for (lens, cols) in [(&[1][..], 1), (&[1, 5, 300][..], 37), (&[2, 2][..], 1024)] {
        check(
            cases,
            &format!("pooling {lens:?} cols={cols}"),
            tol::KERNEL_F32,
            |c| {
                (
                    pooling(&c.backend, lens, cols),
                    pooling_of(
                        &Reference,
                        &c.stored(&pooling_input(lens, cols)),
                        lens,
                        cols,
                    ),
                )
            },
        );
    }
}

#[test]
fn pooling_gathering_and_normalisation() {
    pooling_gathering_and_normalisation_on(&cpu_cases());
    pooling_gathering_and_normalisation_on(&gpu_cases());
}

/// On the GPU, mean pooling with its normalisation fused gives the bits of the two kernels in a
/// row, in both precisions.
#[test]
fn fused_mean_pool_normalisation_has_the_bits_of_the_two_kernels() {
    for c in gpu_cases() {
        let b = &c.backend;
        for (lens, cols) in [(&[1, 5, 300][..], 37), (&[2, 2][..], 1024)] {
            let batch = packed(lens);
            let x = b
                .tensor(&pooling_input(lens, cols), batch.tokens(), cols)
                .unwrap();
            let on = b.batch(&batch).unwrap();
            let fused = b
                .to_host(&b.mean_pool_normalized(&x, &on).unwrap())
                .unwrap();
            let pooled = b.mean_pool(&x, &on).unwrap();
            let apart = b.to_host(&b.l2_normalize(&pooled).unwrap()).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fused), bits(&apart), "{} {lens:?} {cols}", c.name);
        }
    }
}

fn l2_normalize_keeps_zero_rows_zero_on<B: Backend>(cases: &[Case<B>]) {
    check(cases, "l2 of zeros", tol::KERNEL_F32, |c| {
        let b = &c.backend;
        let x = b.tensor(&[0.0; 6], 2, 3).unwrap();
        (
            b.to_host(&b.l2_normalize(&x).unwrap()).unwrap(),
            vec![0.0; 6],
        )
    });
}

#[test]
fn l2_normalize_keeps_zero_rows_zero() {
    l2_normalize_keeps_zero_rows_zero_on(&cpu_cases());
    l2_normalize_keeps_zero_rows_zero_on(&gpu_cases());
}

fn empty_inputs_give_empty_outputs_on<B: Backend>(cases: &[Case<B>]) {
    for c in cases {
        let b = &c.backend;
        let x = b.tensor(&random(12, 1.0, 5), 4, 3).unwrap();
        assert!(
            b.to_host(&b.gather_rows(&x, &[]).unwrap())
                .unwrap()
                .is_empty(),
            "{}",
            c.name
        );
    }
}

#[test]
fn empty_inputs_give_empty_outputs() {
    empty_inputs_give_empty_outputs_on(&cpu_cases());
    empty_inputs_give_empty_outputs_on(&gpu_cases());
}

/// The same mistakes, made on one backend: every operand shape `Backend` checks, wrong once.
/// Returns each mistake's error message, after asserting it is an `Error::Shape`.
fn mistakes<B: Backend>(b: &B) -> Vec<String> {
    let ok = packed(&[2, 3]);
    let batch = b.batch(&ok).unwrap();
    let x = b.tensor(&random(5 * 8, 1.0, 1), 5, 8).unwrap(); // [T = 5, 8]
    let qkv = b.tensor(&random(5 * 24, 1.0, 2), 5, 24).unwrap(); // [T, 3h], h = 8
    let w = b.linear(&random(4 * 8, 1.0, 3), &[0.0; 4], 4, 8).unwrap(); // [4, 8]
    let table = |rows: usize, cols: usize| b.table(&random(rows * cols, 1.0, 4), rows, cols);
    let (word, pos, ty) = (
        table(50, 8).unwrap(),
        table(8, 8).unwrap(),
        table(2, 8).unwrap(),
    );
    let row = |cols: usize| b.tensor(&vec![1.0; cols], 1, cols).unwrap();
    let bad_batch = |edit: fn(&mut PackedBatch)| {
        let mut p = packed(&[2, 3]);
        edit(&mut p);
        b.batch(&p).err()
    };
    let results: Vec<(&str, Option<bge::Error>)> = vec![
        ("tensor", b.tensor(&[0.0; 5], 2, 3).err()),
        ("table", b.table(&[0.0; 7], 2, 3).err()),
        ("linear weight", b.linear(&[0.0; 5], &[0.0; 2], 2, 3).err()),
        ("linear bias", b.linear(&[0.0; 6], &[0.0; 3], 2, 3).err()),
        ("batch types", bad_batch(|p| p.type_ids.truncate(4))),
        ("batch offsets", bad_batch(|p| p.offsets[2] = 9)),
        (
            "batch empty sequence",
            bad_batch(|p| p.offsets.insert(1, 0)),
        ),
        (
            "embed widths",
            b.embed(&batch, &word, &table(8, 4).unwrap(), &ty).err(),
        ),
        (
            "embed ids",
            b.embed(&batch, &table(30, 8).unwrap(), &pos, &ty).err(),
        ),
        (
            "embed positions",
            b.embed(&batch, &word, &table(2, 8).unwrap(), &ty).err(),
        ),
        (
            "embed types",
            b.embed(&batch, &word, &pos, &table(1, 8).unwrap()).err(),
        ),
        (
            "embed layer norm ids",
            b.embed_layer_norm(
                &batch,
                &table(30, 8).unwrap(),
                &pos,
                &ty,
                &row(8),
                &row(8),
                1e-5,
            )
            .err(),
        ),
        (
            "embed layer norm gamma",
            b.embed_layer_norm(&batch, &word, &pos, &ty, &row(7), &row(8), 1e-5)
                .err(),
        ),
        ("matmul", b.matmul(&qkv, &w, Activation::None).err()),
        (
            "layer norm gamma",
            b.layer_norm(&x, None, &row(7), &row(8), 1e-5).err(),
        ),
        (
            "layer norm beta",
            b.layer_norm(&x, None, &row(8), &x, 1e-5).err(),
        ),
        (
            "layer norm residual",
            b.layer_norm(&x, Some(&qkv), &row(8), &row(8), 1e-5).err(),
        ),
        ("attention rows", b.attention(&row(24), &batch, 2).err()),
        ("attention columns", b.attention(&x, &batch, 2).err()),
        ("attention no heads", b.attention(&qkv, &batch, 0).err()),
        ("attention uneven heads", b.attention(&qkv, &batch, 3).err()),
        ("gather", b.gather_rows(&x, &[0, 5]).err()),
        ("mean pool", b.mean_pool(&row(8), &batch).err()),
    ];
    results
        .into_iter()
        .map(|(what, err)| match err {
            Some(bge::Error::Shape(message)) => message,
            other => panic!("{}: {what} gave {other:?}, not Error::Shape", b.describe()),
        })
        .collect()
}

#[test]
fn wrong_shapes_get_the_same_error_from_every_backend() {
    let want = mistakes(&Reference);
    for c in cpu_cases() {
        assert_eq!(mistakes(&c.backend), want, "{}", c.name);
    }
    for c in gpu_cases() {
        assert_eq!(mistakes(&c.backend), want, "{}", c.name);
    }
    // The messages say what is wrong, e.g.:
    assert_eq!(
        want[13],
        "matmul: the input is [5, 24] but the layer [4, 8] takes 8 columns"
    );
}
