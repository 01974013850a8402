//! PyTorch zip checkpoints: the tiny-m3 fixtures against their safetensors twin, and hostile or
//! broken archives built byte by byte here, each of which must fail with a message that says why.

mod common;

use std::collections::BTreeSet;

use bge::internals::{DType, WeightFile, parse_bytes};
use common::model_dir;
use common::torch_file::*;

#[test]
fn pytorch_model_bin_equals_model_safetensors() {
    let dir = model_dir("tiny-m3");
    let bin = WeightFile::open(&dir.join("pytorch_model.bin")).unwrap();
    let st = WeightFile::open(&dir.join("model.safetensors")).unwrap();
    let names: BTreeSet<&str> = bin.names().collect();
    assert_eq!(names, st.names().collect::<BTreeSet<_>>());
    assert!(names.contains("embeddings.word_embeddings.weight"));
    let mut values = 0;
    for name in names {
        let (b, s) = (bin.get(name).unwrap(), st.get(name).unwrap());
        assert_eq!((b.dtype, b.shape), (s.dtype, s.shape), "{name}");
        assert_eq!(b.bytes, s.bytes, "{name}");
        values += b.to_f32().len();
    }
    assert!(values > 100_000, "only {values} values compared");
}

#[test]
fn m3_heads_load_with_their_shapes() {
    let dir = model_dir("tiny-m3");
    for (file, weight, bias) in [
        ("colbert_linear.pt", vec![32, 32], vec![32]),
        ("sparse_linear.pt", vec![1, 32], vec![1]),
    ] {
        let f = WeightFile::open(&dir.join(file)).unwrap();
        assert_eq!(
            f.names().collect::<BTreeSet<_>>(),
            ["bias", "weight"].into()
        );
        let w = f.get("weight").unwrap();
        assert_eq!(
            (w.dtype, w.shape),
            (DType::F32, weight.as_slice()),
            "{file}"
        );
        assert!(
            w.to_f32().iter().any(|&v| v != 0.0),
            "{file}: all-zero weight"
        );
        assert_eq!(f.get("bias").unwrap().shape, bias.as_slice(), "{file}");
    }
}

#[test]
fn a_hand_built_checkpoint_loads_in_both_zip_flavours() {
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    for zip64 in [false, true] {
        let bytes = checkpoint(&state_dict(&[contiguous("w", 2, 3)]), &data, zip64);
        assert_eq!(
            parse_bytes(&bytes).unwrap(),
            [("w".to_owned(), DType::F32, vec![2, 3])]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pt");
        std::fs::write(&path, &bytes).unwrap();
        let file = WeightFile::open(&path).unwrap();
        assert_eq!(file.get("w").unwrap().to_f32(), [0., 1., 2., 3., 4., 5.]);
    }
}

#[test]
fn torch_state_dict_extras_are_understood() {
    // What torch.save(module.state_dict()) adds: an OrderedDict whose `_metadata` comes in a
    // BUILD, nn.Parameters, and int64 buffers (skipped: they are not weights).
    let mut p = Pickle::new()
        .global("collections", "OrderedDict")
        .op(EMPTY_TUPLE)
        .op(REDUCE)
        .op(MARK)
        .str("w")
        .global("torch._utils", "_rebuild_parameter")
        .op(MARK);
    p = tensor(p, &contiguous("w", 2, 3));
    p = p.op(NEWTRUE).global("collections", "OrderedDict");
    p = p.op(EMPTY_TUPLE).op(REDUCE).op(TUPLE).op(REDUCE).str("ids");
    let ids = TensorSpec {
        class: "LongStorage",
        ..contiguous("ids", 1, 3)
    };
    p = tensor(p, &ids).op(SETITEMS);
    let metadata = p.op(EMPTY_DICT).str("_metadata").op(EMPTY_DICT).op(SETITEM);
    let pickle = metadata.op(BUILD).op(STOP).0;
    let bytes = checkpoint(&pickle, &[0; 24], false);
    assert_eq!(
        parse_bytes(&bytes).unwrap(),
        [("w".to_owned(), DType::F32, vec![2, 3])]
    );
}

#[test]
fn code_in_the_pickle_is_refused_by_name() {
    let refused = |pickle: Vec<u8>, global: &str| {
        let message = error(&checkpoint(&pickle, &[0; 24], false));
        let want = format!(
            "refusing to load: the pickle references the global {global}; only PyTorch state dicts"
        );
        assert!(message.contains(&want), "{message}");
    };
    // GLOBAL 'os system', ('echo pwned',), REDUCE: what `pickle.dumps` writes for a payload
    // whose __reduce__ returns (os.system, ('echo pwned',)).
    let payload = |p: Pickle| p.str("echo pwned").op(TUPLE1).op(REDUCE);
    refused(
        payload(Pickle::new().global("os", "system")).op(STOP).0,
        "os.system",
    );
    refused(
        payload(Pickle::new().global("posix", "system")).op(STOP).0,
        "posix.system",
    );
    refused(
        payload(Pickle::new().global("__builtin__", "exec"))
            .op(STOP)
            .0,
        "__builtin__.exec",
    );
    // Protocol 4 names its globals with STACK_GLOBAL.
    let stack_global = Pickle::new().str("builtins").str("eval").op(STACK_GLOBAL);
    refused(payload(stack_global).op(STOP).0, "builtins.eval");
    // After a valid tensor, as the value of a state dict entry.
    let mut p = Pickle::new().op(EMPTY_DICT).op(MARK).str("w");
    p = tensor(p, &contiguous("w", 2, 3)).str("x");
    refused(
        payload(p.global("os", "system")).op(SETITEMS).op(STOP).0,
        "os.system",
    );
    // A storage class that is not one of the four allowed.
    let spec = TensorSpec {
        class: "IntStorage",
        ..contiguous("w", 2, 3)
    };
    refused(state_dict(&[spec]), "torch.IntStorage");
}

#[test]
fn truncated_files_are_reported() {
    let bin = std::fs::read(model_dir("tiny-m3").join("pytorch_model.bin")).unwrap();
    for len in [bin.len() / 2, bin.len() - 10, 100, 4] {
        let message = error(&bin[..len]);
        assert!(
            message.contains("no end-of-central-directory record"),
            "{len}: {message}"
        );
    }
    // A complete archive whose pickle lost its last byte.
    let mut cut = state_dict(&[contiguous("w", 2, 3)]);
    let ends = cut.pop();
    assert_eq!(ends, Some(STOP));
    let message = error(&checkpoint(&cut, &[0; 24], false));
    assert!(
        message.contains("the pickle ends before its STOP opcode"),
        "{message}"
    );
}

#[test]
fn a_storage_shorter_than_its_tensor_is_reported() {
    let bytes = checkpoint(&state_dict(&[contiguous("w", 2, 3)]), &[0; 20], false);
    let message = error(&bytes);
    assert!(
        message.contains(
            "tensor `w`: shape [2, 3] from element 0 runs past the 20 bytes of storage `0`"
        ),
        "{message}"
    );
    let offset = TensorSpec {
        offset: 1,
        ..contiguous("w", 2, 3)
    };
    let message = error(&checkpoint(&state_dict(&[offset]), &[0; 24], false));
    assert!(message.contains("from element 1 runs past"), "{message}");
}

#[test]
fn non_contiguous_tensors_are_refused() {
    let transposed = TensorSpec {
        stride: vec![1, 2],
        ..contiguous("w", 2, 3)
    };
    let message = error(&checkpoint(&state_dict(&[transposed]), &[0; 24], false));
    assert!(
        message.contains("tensor `w`: strides [1, 2] are not row-major for shape [2, 3]"),
        "{message}"
    );
}

#[test]
fn unknown_opcodes_are_refused() {
    for op in [0xff, b'G', b']'] {
        let pickle = Pickle::new().op(EMPTY_DICT).op(op).op(STOP).0;
        let message = error(&checkpoint(&pickle, &[], false));
        assert!(
            message.contains(&format!("byte 3: unsupported pickle opcode 0x{op:02x}")),
            "{message}"
        );
    }
}

#[test]
fn hostile_nesting_and_memo_indices_are_bounded() {
    let fails_with = |pickle: Vec<u8>, want: &str| {
        let message = error(&checkpoint(&pickle, &[], false));
        assert!(message.contains(want), "{message}");
    };
    let mut marks = Pickle::new();
    marks.0.resize(2 + (1 << 20) + 1, MARK);
    fails_with(marks.op(STOP).0, "more than 1048576 values and marks");

    let mut tuples = Pickle::new().op(EMPTY_TUPLE);
    tuples.0.resize(3 + 100_000, TUPLE1);
    fails_with(tuples.op(STOP).0, "values nest more than 32 deep");

    // {'k': {'k': ... {}}}: forty dicts and keys pushed, then forty SETITEMs.
    let mut dicts = Pickle::new();
    for _ in 0..40 {
        dicts = dicts.op(EMPTY_DICT).str("k");
    }
    dicts = dicts.op(EMPTY_DICT);
    dicts.0.resize(dicts.0.len() + 40, SETITEM);
    fails_with(dicts.op(STOP).0, "values nest more than 32 deep");

    // Changing a dict after memoising it would copy it on every change.
    let shared = Pickle::new().op(EMPTY_DICT).str("a").op(NONE).op(SETITEM);
    let shared = shared.op(BINPUT).op(0).str("b").op(NONE).op(SETITEM);
    fails_with(shared.op(STOP).0, "changes a dict after sharing it");

    let get = Pickle::new().op(LONG_BINGET).raw(&u32::MAX.to_le_bytes());
    fails_with(get.op(STOP).0, "memo index 4294967295 was never set");

    let put = Pickle::new()
        .op(NONE)
        .op(LONG_BINPUT)
        .raw(&u32::MAX.to_le_bytes());
    fails_with(put.op(STOP).0, "does not hold a state dict");

    fails_with(
        Pickle::new().op(SETITEMS).op(STOP).0,
        "closes a MARK it never opened",
    );
    fails_with(
        Pickle::new().op(MARK).op(TUPLE2).0,
        "pops more values than it pushed",
    );
    fails_with(Pickle::new().op(STOP).0, "pops more values than it pushed");
    let huge_string = Pickle::new().op(0x8d).raw(&u64::MAX.to_le_bytes());
    fails_with(huge_string.0, "ends before its STOP opcode");
}

#[test]
fn odd_archives_are_reported() {
    let pickle = state_dict(&[contiguous("w", 2, 3)]);
    let mut compressed = checkpoint(&pickle, &[0; 24], false);
    // Mark every entry as deflated (method 8) in the central directory.
    let mut at = 0;
    while let Some(i) = find(&compressed[at..], &0x0201_4b50u32.to_le_bytes()) {
        compressed[at + i + 10] = 8;
        at += i + 4;
    }
    assert!(error(&compressed).contains("is compressed (zip method 8)"));

    let not_torch = zip(&[("model/weights.npy".to_owned(), vec![1, 2, 3])], false);
    assert!(error(&not_torch).contains("not a torch.save checkpoint"));

    let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
    assert!(error(legacy).contains("legacy (pre-1.6) torch.save file"));
}

/// The error message for checkpoint `bytes`, which must fail to parse.
fn error(bytes: &[u8]) -> String {
    match parse_bytes(bytes) {
        Ok(tensors) => panic!("parsed, but should have failed: {tensors:?}"),
        Err(e) => e.to_string(),
    }
}
