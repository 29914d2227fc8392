//! `explain` on real and constructed messages.

use super::*;

/// A figure as a fixture states it: bytes, or a size with a binary unit as the message printed
/// it ("787.74 MiB"), or null for a figure that must be absent.
fn expected_bytes(v: &serde_json::Value) -> Option<u64> {
    if let Some(b) = v.as_u64() {
        return Some(b);
    }
    let s = v.as_str()?;
    let (num, unit) = s.split_once(' ').unwrap();
    let scale = match unit {
        "KiB" => 1u64 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => panic!("unit {unit}"),
    };
    Some((num.parse::<f64>().unwrap() * scale as f64).round() as u64)
}

/// Real messages from public issue trackers (each with its source in the fixture). Those with
/// an `expect` object are checked figure by figure against it (sizes as printed; MPS prints
/// binary sizes as "GB", written GiB there); the others by which figures the text states.
#[test]
fn real_messages_from_public_trackers_are_read() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/oom_messages.json"
    );
    let fixtures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for m in fixtures.as_array().unwrap() {
        let (id, text) = (m["id"].as_str().unwrap(), m["text"].as_str().unwrap());
        assert!(
            m["source"].as_str().unwrap().starts_with("https://"),
            "{id}"
        );
        let want = match m["form"].as_str().unwrap() {
            "pytorch-old" => Form::PytorchOld,
            "pytorch-new" => Form::PytorchNew,
            "tensorflow" => Form::Tensorflow,
            "jax" => Form::Jax,
            "cuda-bare" => Form::CudaBare,
            "pytorch-mps" => Form::PytorchMps,
            "cpu-host" => Form::CpuHost,
            "cupy" => Form::Cupy,
            "numba" => Form::Numba,
            "torch-xla" => Form::TorchXla,
            _ => {
                assert!(explain(text).is_err(), "{id} is no OOM message");
                continue;
            }
        };
        let e = explain(text).unwrap_or_else(|_| panic!("{id} not read"));
        assert_eq!(e.form, want, "{id}");
        assert!(!e.advice.is_empty(), "{id}");
        if let Some(expect) = m.get("expect").and_then(|x| x.as_object()) {
            let json = serde_json::to_value(&e).unwrap();
            for (field, want) in expect {
                if field == "backend" {
                    assert_eq!(json[field], *want, "{id}: {field}");
                    continue;
                }
                // Counts, flags and words (a memory space, a shape) as they are; sizes by unit.
                if field == "gpu_index" || want.is_boolean() || json[field].is_string() {
                    assert_eq!(json[field], *want, "{id}: {field}");
                    continue;
                }
                assert_eq!(json[field].as_u64(), expected_bytes(want), "{id}: {field}");
            }
            continue;
        }
        // Every figure the text states is extracted.
        let says = |phrase: &str| text.contains(phrase);
        assert_eq!(
            e.tried_to_allocate_bytes.is_some(),
            says("llocat") && !says("CUDA error"),
            "{id}"
        );
        assert_eq!(
            e.total_capacity_bytes.is_some(),
            says("total capac"),
            "{id}"
        );
        let pytorch = matches!(want, Form::PytorchOld | Form::PytorchNew);
        assert_eq!(e.free_bytes.is_some(), pytorch && says(" free"), "{id}");
        assert_eq!(
            e.reserved_unallocated_bytes.is_some(),
            says("reserved") || says("cached"),
            "{id}"
        );
        assert_eq!(
            e.process_in_use_bytes.is_some(),
            says("memory in use"),
            "{id}"
        );
        assert!(!e.advice.is_empty(), "{id}");
    }
}

#[test]
fn figures_in_each_form_come_out_in_bytes() {
    let new = explain("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 572.00 MiB. GPU 0 has a total capacity of 39.49 GiB of which 321.31 MiB is free. Process 3721648 has 414.00 MiB memory in use. Including non-PyTorch memory, this process has 37.46 GiB memory in use. Process 1374765 has 414.00 MiB memory in use. Of the allocated memory 36.04 GiB is allocated by PyTorch, and 321.37 MiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(new.tried_to_allocate_bytes, Some(572 << 20));
    assert_eq!(new.process_in_use_bytes, bytes("37.46", "GiB"));
    assert_eq!(new.processes.len(), 2);
    assert_eq!(new.reserved_unallocated_bytes, bytes("321.37", "MiB"));
    // Other processes hold more than the request: freeing them comes first.
    assert!(
        new.advice[0].starts_with("free the GPU"),
        "{:?}",
        new.advice
    );
    let tf = explain("ResourceExhaustedError: OOM when allocating tensor with shape[8,64,256,256] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc").unwrap();
    assert_eq!(tf.tried_to_allocate_bytes, Some(8 * 64 * 256 * 256 * 4));
    assert_eq!(tf.gpu_index, Some(0));
    let jax = explain("Resource exhausted: Failed to allocate request for 32.00MiB (33554432B) on device ordinal 0").unwrap();
    assert_eq!(jax.tried_to_allocate_bytes, Some(33_554_432));
    let frag = explain("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB. GPU 0 has a total capacty of 23.65 GiB of which 1.66 GiB is free. Including non-PyTorch memory, this process has 20.81 GiB memory in use. Of the allocated memory 12.09 GiB is allocated by PyTorch, and 4.84 GiB is reserved by PyTorch but unallocated.").unwrap();
    assert!(
        frag.advice[0].contains("expandable_segments:True"),
        "{:?}",
        frag.advice
    );
}

#[test]
fn the_classic_report_is_read_figure_by_figure() {
    let e = explain("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.17 GiB total capacity; 9.00 GiB already allocated; 1.50 GiB free; 9.50 GiB reserved in total by PyTorch)").unwrap();
    assert_eq!(e.form, Form::PytorchOld);
    assert_eq!(e.gpu_index, Some(0));
    assert_eq!(e.tried_to_allocate_bytes, Some(2 << 30));
    assert_eq!(
        e.total_capacity_bytes,
        Some((11.17 * f64::from(1u32 << 30)).round() as u64)
    );
    assert_eq!(e.allocated_by_pytorch_bytes, Some(9 << 30));
    assert_eq!(e.free_bytes, Some(3 << 29));
    assert_eq!(e.reserved_by_pytorch_bytes, Some(19 << 29));
    assert_eq!(e.reserved_unallocated_bytes, Some(1 << 29));
    assert!(e.process_in_use_bytes.is_none());
    // 11.17 − 1.5 free − 9.5 reserved ≈ 0.17 GiB held elsewhere (contexts, other processes).
    assert!(e.held_elsewhere_bytes.unwrap() < 200 << 20);
    assert!(
        e.advice[0].starts_with("use a smaller batch"),
        "{:?}",
        e.advice
    );
}

/// A T4 whose memory is simply full: 42.21 MiB cached but unused is well under 5% of
/// 14.56 GiB.
const T4_FULL: &str = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 14.56 GiB of which 3.81 MiB is free. Process 1234 has 14.55 GiB memory in use. Of the allocated memory 14.40 GiB is allocated by PyTorch, and 42.21 MiB is reserved by PyTorch but unallocated.";

fn position(e: &Explanation, prefix: &str) -> Option<usize> {
    e.advice.iter().position(|a| a.starts_with(prefix))
}

/// The T4-like message with other figures for the request and the unallocated memory.
fn t4_with(tried: &str, unallocated: &str) -> Explanation {
    explain(
        &T4_FULL
            .replace("20.00 MiB", tried)
            .replace("42.21 MiB", unallocated),
    )
    .unwrap()
}

#[test]
fn fragmentation_comes_first_only_when_a_real_share_of_the_capacity_is_cached_unused() {
    // Full memory: a smaller batch, then mixed precision, then (the 42 MiB are more than
    // the 20 MiB request) fragmentation.
    let e = explain(T4_FULL).unwrap();
    assert!(
        e.advice[0].starts_with("use a smaller batch"),
        "{:?}",
        e.advice
    );
    let frag = position(&e, "reduce fragmentation").expect("still listed");
    assert!(
        frag > position(&e, "use mixed precision").unwrap(),
        "{:?}",
        e.advice
    );
    assert!(e.advice[frag].contains("42.21 MiB"), "{}", e.advice[frag]);
    // 5% of 14.56 GiB is 0.728 GiB: 0.72 GiB is under it, 0.73 GiB over.
    let below = t4_with("20.00 MiB", "0.72 GiB");
    assert!(
        position(&below, "reduce fragmentation").unwrap() > 1,
        "{:?}",
        below.advice
    );
    let above = t4_with("20.00 MiB", "0.73 GiB");
    assert_eq!(
        position(&above, "reduce fragmentation"),
        Some(0),
        "{:?}",
        above.advice
    );
    // Less cached than the request: defragmenting cannot make room, so it is not advised.
    let none = t4_with("100.00 MiB", "42.21 MiB");
    assert_eq!(
        position(&none, "reduce fragmentation"),
        None,
        "{:?}",
        none.advice
    );
    // Total unknown: first when the cached memory covers the request.
    let old = "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 9.00 GiB already allocated; 1.50 GiB free; 9.50 GiB reserved in total by PyTorch)";
    assert_eq!(
        position(&explain(old).unwrap(), "reduce fragmentation"),
        Some(0)
    );
    let old = old.replace("20.00 MiB", "2.00 GiB");
    assert_eq!(
        position(&explain(&old).unwrap(), "reduce fragmentation"),
        None
    );
}

#[test]
fn mixed_precision_says_bf16_only_where_the_gpu_has_it() {
    let mixed = |e: &Explanation| e.advice[position(e, "use mixed precision").unwrap()].clone();
    // A T4 (compute capability 7.5), identified by its total capacity: fp16 and a scaler.
    let t4 = explain(T4_FULL).unwrap();
    assert_eq!(t4.gpu, Some("t4"));
    let advice = mixed(&t4);
    assert!(
        advice.contains("Tesla T4")
            && advice.contains("no bf16")
            && advice.contains("fp16=True")
            && advice.contains("torch.amp.GradScaler(\"cuda\")")
            && !advice.contains("bf16=True")
            && !advice.contains("torch.bfloat16"),
        "{advice}"
    );
    // An A100 80 GB (8.0): bf16.
    let a100 = explain(&T4_FULL.replace("14.56 GiB of which", "79.14 GiB of which")).unwrap();
    assert_eq!(a100.gpu, Some("a100-80"));
    let advice = mixed(&a100);
    assert!(
        advice.contains("bf16=True") && advice.contains("A100 80 GB") && !advice.contains("fp16"),
        "{advice}"
    );
    // No preset reports 23.65 GiB: the rule, both ways.
    let unknown = explain(&T4_FULL.replace("14.56 GiB of which", "23.65 GiB of which")).unwrap();
    assert_eq!(unknown.gpu, None);
    let advice = mixed(&unknown);
    assert!(
        advice.contains("torch.cuda.is_bf16_supported()")
            && advice.contains("compute capability 8.0+")
            && advice.contains("bf16=True")
            && advice.contains("fp16=True")
            && advice.contains("GradScaler"),
        "{advice}"
    );
    // The GPU named by the user wins over the one the figure suggests.
    let mut named = explain(T4_FULL).unwrap();
    named.set_gpu(crate::presets::find("h100").unwrap());
    assert_eq!(named.gpu, Some("h100"));
    assert!(mixed(&named).contains("bf16=True"), "{}", mixed(&named));
    let json = serde_json::to_value(&named).unwrap();
    assert_eq!(json["gpu"], "h100");
    assert!(serde_json::to_value(&unknown).unwrap()["gpu"].is_null());
}

#[test]
fn no_figure_is_finer_than_the_messages_rounding() {
    let e = explain(T4_FULL).unwrap();
    let figure = |name: &str| {
        e.figures
            .iter()
            .find(|f| f.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {:?}", e.figures))
            .clone()
    };
    // 14.56 GiB − 3.81 MiB − 14.55 GiB: a figure in GiB, to 0.01 GiB.
    assert!(
        figure("held elsewhere").starts_with("held elsewhere 0.01 GiB:"),
        "{}",
        figure("held elsewhere")
    );
    // 14.40 GiB + 42.21 MiB, in GiB; the figures read from the message as printed.
    assert!(figure("reserved by PyTorch").starts_with("reserved by PyTorch 14.44 GiB:"));
    assert!(figure("free").starts_with("free 3.81 MiB:"));
    assert!(figure("reserved but unallocated").starts_with("reserved but unallocated 42.21 MiB:"));
    assert!(figure("process 1234").starts_with("process 1234 holds 14.55 GiB"));
    // Nothing left: under the message's rounding, not "0 B" or a few MiB.
    let full =
        explain(&T4_FULL.replace("Process 1234 has 14.55 GiB", "Process 1234 has 14.56 GiB"))
            .unwrap();
    assert!(
        full.figures
            .iter()
            .any(|f| f.starts_with("held elsewhere under 0.01 GiB:")),
        "{:?}",
        full.figures
    );
    // The older form's reserved − allocated, in the coarser unit.
    let old = explain("RuntimeError: CUDA out of memory. Tried to allocate 2.00 MiB (GPU 0; 11.17 GiB total capacity; 9.00 GiB already allocated; 1.50 GiB free; 9216.50 MiB reserved in total by PyTorch)").unwrap();
    assert!(
        old.figures
            .iter()
            .any(|f| f.starts_with("reserved but unallocated under 0.01 GiB:")),
        "{:?}",
        old.figures
    );
}

#[test]
fn every_form_has_a_title_that_is_a_sentence() {
    let bare = explain("CUDA error: out of memory").unwrap();
    assert_eq!(bare.form, Form::CudaBare);
    let text = bare.text();
    assert!(
        text.starts_with(
            "A CUDA out-of-memory error with no figures (\"CUDA error: out of memory\")"
        ),
        "{text}"
    );
    assert!(!text.contains("without figures out-of-memory"), "{text}");
    for form in [
        Form::PytorchOld,
        Form::PytorchNew,
        Form::Tensorflow,
        Form::Jax,
        Form::CudaBare,
        Form::PytorchMps,
        Form::CpuHost,
        Form::Cupy,
        Form::Numba,
        Form::TorchXla,
    ] {
        let t = form.title();
        assert!(t.starts_with("A ") && t.ends_with('.'), "{t}");
        assert!(!form.name().is_empty() && !form.name().contains("without"));
    }
    assert!(
        explain(T4_FULL)
            .unwrap()
            .text()
            .starts_with(Form::PytorchNew.title())
    );
}

#[test]
fn the_largest_batch_is_an_inference_figure_with_the_way_to_measure_training() {
    let mut e = explain(T4_FULL).unwrap();
    e.set_largest_batch(LargestBatch::inference(
        "bert-large-uncased".into(),
        "bert-large-uncased".into(),
        512,
        crate::precision::Precision::F32,
        e.total_capacity_bytes.unwrap(),
        Some(141),
    ));
    let batch = &e.advice[position(&e, "use a smaller batch").unwrap()];
    assert!(
        batch.contains("`per_device_eval_batch_size=141`"),
        "{batch}"
    );
    assert!(
        !batch.contains("per_device_train_batch_size=141"),
        "{batch}"
    );
    assert!(
        batch.contains("candle's estimate of one inference forward")
            && batch.contains("not measured")
            && batch.contains("no gradients, no optimizer state"),
        "{batch}"
    );
    let measure = &e.advice[position(&e, "measure the training batch").unwrap()];
    assert!(
        measure.contains("AdamW")
            && measure.contains("`oomlab sweep --runtime torch --workload train --model bert-large-uncased --seq 512 --capacity 14.56GiB`"),
        "{measure}"
    );
    let json = serde_json::to_value(&e).unwrap();
    let lb = &json["largest_batch"];
    assert_eq!(
        (
            &lb["runtime"],
            &lb["workload"],
            &lb["estimated"],
            &lb["batch"]
        ),
        (&"candle".into(), &"infer".into(), &true.into(), &141.into())
    );
    assert!(lb.get("model_given").is_none());
    // With a preset's exact memory (--gpu), the command names the preset.
    e.set_largest_batch(LargestBatch::inference(
        "bert-large-uncased".into(),
        "my model".into(),
        512,
        crate::precision::Precision::F32,
        crate::presets::find("t4").unwrap().total_bytes,
        None,
    ));
    let measure = &e.advice[position(&e, "measure the training batch").unwrap()];
    assert!(
        measure.contains("--model 'my model' --seq 512 --gpu t4`"),
        "{measure}"
    );
    let batch = &e.advice[position(&e, "use a smaller batch").unwrap()];
    assert!(
        batch.contains("not even an inference batch of 1 fits"),
        "{batch}"
    );
}

#[test]
fn text_that_is_not_an_oom_message_is_refused() {
    let e = explain("RuntimeError: CUDA error: device-side assert triggered").unwrap_err();
    assert!(
        e.to_string()
            .contains("not an out-of-memory message I recognise")
    );
}

/// TensorFlow's and JAX's messages get their own framework's fixes, never PyTorch's; XLA's
/// asynchronous allocator's form gives its request, free and total.
#[test]
fn tensorflow_and_jax_get_their_own_frameworks_advice() {
    let pytorch_only = [
        "PYTORCH_CUDA_ALLOC_CONF",
        "torch",
        "per_device_",
        "empty_cache",
    ];
    let clean = |advice: &[String]| {
        for a in advice {
            for word in pytorch_only {
                assert!(!a.contains(word), "'{word}' in {a}");
            }
        }
    };
    let tf = explain("ResourceExhaustedError: OOM when allocating tensor with shape[8,64,256,256] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc").unwrap();
    clean(&tf.advice);
    assert!(
        tf.advice[0].starts_with("use a smaller batch (`model.fit"),
        "{:?}",
        tf.advice
    );
    assert!(
        tf.advice
            .iter()
            .any(|a| a.contains("set_memory_growth(gpu, True)"))
    );
    assert!(
        tf.advice
            .iter()
            .any(|a| a.contains("set_global_policy('mixed_float16')"))
    );
    assert!(tf.advice.iter().any(|a| a.contains("tf.recompute_grad")));
    let jax = explain("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 bytes.").unwrap();
    clean(&jax.advice);
    assert!(
        jax.advice[0].contains("XLA_PYTHON_CLIENT_PREALLOCATE=false"),
        "{:?}",
        jax.advice
    );
    assert!(
        jax.advice
            .iter()
            .any(|a| a.contains("XLA_PYTHON_CLIENT_MEM_FRACTION"))
    );
    assert!(jax.advice.iter().any(|a| a.contains("jax.checkpoint")));
    assert!(jax.advice.iter().any(|a| a.contains("jnp.bfloat16")));
    // XLA's asynchronous allocator, as JAX prints it, then as TensorFlow does.
    let xla = "2024-05-01 12:00:00.000000: W external/xla/xla/stream_executor/gpu/gpu_cudamallocasync_allocator.cc:461] cuMemAllocAsync failed to allocate 2147483648 bytes: CUDA error: out of memory (CUDA_ERROR_OUT_OF_MEMORY)\n Reported by CUDA: Free memory/Total memory: 1073741824/15843721216";
    let e = explain(xla).unwrap();
    assert_eq!(e.form, Form::Jax);
    assert_eq!(e.tried_to_allocate_bytes, Some(2 << 30));
    assert_eq!(e.free_bytes, Some(1 << 30));
    assert_eq!(e.total_capacity_bytes, Some(15_843_721_216));
    assert!(
        e.figures.iter().any(|f| f.starts_with("free 1.00 GiB")),
        "{:?}",
        e.figures
    );
    clean(&e.advice);
    assert!(e.advice[0].contains("XLA_PYTHON_CLIENT_PREALLOCATE"));
    let tf_async = xla.replace(
        "external/xla/xla/stream_executor/gpu/",
        "tensorflow/core/common_runtime/gpu/",
    );
    let e = explain(&tf_async).unwrap();
    assert_eq!(e.form, Form::Tensorflow);
    assert_eq!(e.tried_to_allocate_bytes, Some(2 << 30));
    clean(&e.advice);
}

/// Before 2.1's "reserved", PyTorch printed "cached": what it held beyond its tensors
/// (`amount_cached - amount_allocated`), not all it held. Read as the total, it made "held
/// elsewhere" 21.60 GiB of a 22.37 GiB GPU and the first fix "free the GPU".
#[test]
fn the_old_cached_figure_is_the_reserved_but_unallocated_one() {
    let e = explain("RuntimeError: CUDA out of memory. Tried to allocate 1.12 MiB (GPU 0; 22.37 GiB total capacity; 15.87 GiB already allocated; 3.56 MiB free; 787.74 MiB cached)").unwrap();
    assert_eq!(e.reserved_unallocated_bytes, bytes("787.74", "MiB"));
    assert_eq!(
        e.reserved_by_pytorch_bytes,
        bytes("15.87", "GiB")
            .zip(bytes("787.74", "MiB"))
            .map(|(a, c)| a + c)
    );
    // 22.37 − 0.0035 free − 16.64 reserved: about 5.73 GiB, not 21.60.
    let elsewhere = e.held_elsewhere_bytes.unwrap();
    assert!((5 << 30..6 << 30).contains(&elsewhere), "{elsewhere}");
}

/// Newer PyTorch names CUDA graphs' private pools inside the allocated figure, and a cap set
/// in the process (`N allowed`); both are read, the others' figures with them, and with room
/// on the GPU the cap, not other processes, is the first fix.
#[test]
fn private_pools_and_a_per_process_cap_are_read_and_the_cap_comes_first() {
    let pools = explain("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 MiB. GPU 0 has a total capacity of 47.53 GiB of which 896.00 KiB is free. Process 1686436 has 47.51 GiB memory in use. Of the allocated memory 47.00 GiB is allocated by PyTorch, with 46.22 GiB allocated in private pools (e.g., CUDA Graphs), and 149.10 MiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(pools.allocated_by_pytorch_bytes, bytes("47.00", "GiB"));
    assert_eq!(pools.private_pools_bytes, bytes("46.22", "GiB"));
    assert_eq!(pools.reserved_unallocated_bytes, bytes("149.10", "MiB"));
    assert!(
        pools.figures.iter().any(|f| f.contains("CUDA graphs")),
        "{:?}",
        pools.figures
    );
    let capped = explain("OutOfMemoryError: CUDA out of memory. Tried to allocate 996.00 MiB. GPU 0 has a total capacity of 44.43 GiB of which 9.06 GiB is free. Process 2102129 has 17.54 GiB memory in use. Including non-PyTorch memory, this process has 17.81 GiB memory in use. 17.69 GiB allowed; Of the allocated memory 17.44 GiB is allocated by PyTorch, and 59.88 MiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(capped.allowed_bytes, bytes("17.69", "GiB"));
    assert!(
        capped.advice[0].starts_with("raise this process's memory cap")
            && capped.advice[0].contains("set_per_process_memory_fraction"),
        "{:?}",
        capped.advice
    );
    // 9.06 GiB were free for a 996 MiB request: freeing others' memory is no fix.
    assert!(
        !capped.advice.iter().any(|a| a.starts_with("free the GPU")),
        "{:?}",
        capped.advice
    );
}

/// A figure that cannot be true (PyTorch has printed an unsigned underflow as this process's
/// use) is left out and said so; the others are computed without it.
#[test]
fn an_impossible_figure_is_left_out_and_said_so() {
    let e = explain("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.98 GiB. GPU 0 has a total capacity of 31.84 GiB of which 16.30 GiB is free. Including non-PyTorch memory, this process has 17179869184.00 GiB memory in use. 17.51 GiB allowed; Of the allocated memory 6.74 GiB is allocated by PyTorch, and 7.02 GiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(e.process_in_use_bytes, None);
    assert_eq!(e.ignored.len(), 1, "{:?}", e.ignored);
    assert!(
        e.figures
            .iter()
            .any(|f| f.starts_with("left out: \"this process has 17179869184.00 GiB")),
        "{:?}",
        e.figures
    );
    // From the reserved figure instead: 31.84 − 16.30 − 13.76 ≈ 1.78 GiB.
    let elsewhere = e.held_elsewhere_bytes.unwrap();
    assert!((1 << 30..2 << 30).contains(&elsewhere), "{elsewhere}");
}

/// Each backend's message gets its own tools: `ROCm`'s `rocm-smi` and `PYTORCH_HIP_ALLOC_CONF`,
/// Intel's `xpu-smi` and `torch.xpu`, Apple's MPS its watermark and unified memory, the CPU
/// the computer's memory, and none of them NVIDIA's.
#[test]
fn each_backend_gets_its_own_tools() {
    let all = |e: &Explanation| e.advice.join("\n");
    let hip = explain("HIP out of memory. Tried to allocate 432.00 MiB. GPU 0 has a total capacity of 15.92 GiB of which 7.12 MiB is free. Of the allocated memory 8.08 GiB is allocated by PyTorch, and 6.21 GiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(hip.backend, Some(Backend::Hip));
    let text = all(&hip);
    assert!(
        text.contains("PYTORCH_HIP_ALLOC_CONF=expandable_segments:True"),
        "{text}"
    );
    assert!(!text.contains("nvidia-smi") && !text.contains("PYTORCH_CUDA_ALLOC_CONF"));
    assert!(hip.text().contains("AMD's ROCm (HIP)"));
    let xpu = explain("RuntimeError: XPU out of memory. Tried to allocate 1.71 GiB (GPU 0; 15.56 GiB total capacity; 176.00 MiB already allocated; 176.00 MiB reserved in total by PyTorch)").unwrap();
    let text = all(&xpu);
    assert!(text.contains("torch.autocast(\"xpu\""), "{text}");
    assert!(
        !text.contains("nvidia-smi") && !text.contains("\"cuda\"") && !text.contains("torch.cuda.")
    );
    let mps = explain("MPS backend out of memory (MPS allocated: 17.68 GB, other allocations: 3.95 MB, max allowed: 18.13 GB). Tried to allocate 1024.00 MB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations (may cause system failure).").unwrap();
    let text = all(&mps);
    assert!(
        text.contains("PYTORCH_MPS_HIGH_WATERMARK_RATIO")
            && text.contains("torch.mps.empty_cache()"),
        "{text}"
    );
    assert!(
        !text.contains("nvidia-smi") && !text.contains("cuda"),
        "{text}"
    );
    assert!(
        mps.figures
            .iter()
            .any(|f| f.starts_with("max allowed 18.13 GiB")),
        "{:?}",
        mps.figures
    );
    // The CPU's, even with an application's hint about CUDA after it.
    let cpu = explain("Error [enforce fail at CPUAllocator.cpp:67] . DefaultCPUAllocator: can't allocate memory: you tried to allocate 264896512 bytes. Error code 12 (Cannot allocate memory)\nIf you encounter CUDA out of memory, try to set --tile with a smaller number.").unwrap();
    assert_eq!(cpu.form, Form::CpuHost);
    let text = all(&cpu);
    assert!(
        text.contains("computer's memory") && !text.contains("nvidia-smi"),
        "{text}"
    );
}

/// XLA's messages from a TPU get a TPU's fixes: no GPU preallocation to stop, no `nvidia-smi`.
#[test]
fn a_tpu_message_gets_a_tpus_fixes() {
    let e = explain("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 21.90G of 7.48G hbm. Exceeded hbm capacity by 14.42G.").unwrap();
    assert_eq!(e.form, Form::Jax);
    assert!(e.tpu);
    let all = e.advice.join("\n");
    assert!(
        all.contains("more TPU cores") && all.contains("jax.checkpoint"),
        "{all}"
    );
    assert!(
        !all.contains("XLA_PYTHON_CLIENT_PREALLOCATE") && !all.contains("nvidia-smi"),
        "{all}"
    );
    assert!(e.text().contains("It comes from a TPU"));
    // A GPU's XLA message keeps the GPU's.
    let gpu = explain("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 bytes.").unwrap();
    assert!(!gpu.tpu && gpu.advice[0].contains("XLA_PYTHON_CLIENT_PREALLOCATE"));
}

/// What the review of the real-message reading found: the cap in the older form, a cap that
/// was not what failed, `CuPy`'s current wording, a PyTorch message whose traceback passes
/// through `CuPy`, a Windows process holding more than the card (WDDM), and JAX's old XLA paths.
/// (Constructed from the forms' source, not pasted.)
#[test]
fn caps_cupy_oversubscription_and_old_jax_paths_read_right() {
    let old = explain("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; 1.90 GiB already allocated; 13.50 GiB free; 2.00 GiB allowed; 1.98 GiB reserved in total by PyTorch)").unwrap();
    assert_eq!(old.allowed_bytes, bytes("2.00", "GiB"));
    assert!(
        old.advice[0].starts_with("raise this process's memory cap"),
        "{:?}",
        old.advice
    );
    // A cap the request did not meet: the GPU itself was full.
    let full = explain("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.00 GiB is free. Including non-PyTorch memory, this process has 40.00 GiB memory in use. 75.19 GiB allowed; Of the allocated memory 39.00 GiB is allocated by PyTorch, and 0.50 GiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(full.allowed_bytes, bytes("75.19", "GiB"));
    assert!(
        !full.advice.iter().any(|a| a.contains("memory cap")),
        "{:?}",
        full.advice
    );
    let cupy = explain("cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 200,000,000,000 bytes (allocated so far: 0 bytes).").unwrap();
    assert_eq!(cupy.form, Form::Cupy);
    assert_eq!(cupy.tried_to_allocate_bytes, Some(200_000_000_000));
    assert_eq!(cupy.pool_bytes, Some(0));
    let through = explain("File \"/usr/lib/python3/site-packages/cupy/_core/core.pyx\", line 1\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 14.56 GiB of which 3.81 MiB is free. Process 1234 has 14.55 GiB memory in use. Of the allocated memory 14.40 GiB is allocated by PyTorch, and 42.21 MiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(through.form, Form::PytorchNew);
    let wddm = explain("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 8.00 GiB of which 0 bytes is free. Including non-PyTorch memory, this process has 14.20 GiB memory in use. Of the allocated memory 13.98 GiB is allocated by PyTorch, and 100.00 MiB is reserved by PyTorch but unallocated.").unwrap();
    assert_eq!(wddm.process_in_use_bytes, bytes("14.20", "GiB"));
    assert!(wddm.ignored.is_empty());
    let jax = explain("E external/org_tensorflow/tensorflow/compiler/xla/stream_executor/gpu/gpu_cudamallocasync_allocator.cc:288] cuMemAllocAsync failed to allocate 1073741824 bytes: CUDA error: out of memory (CUDA_ERROR_OUT_OF_MEMORY)").unwrap();
    assert_eq!(jax.form, Form::Jax);
}

/// A message without figures says where its own framework shows them: `torch.cuda` only for
/// PyTorch's, never for JAX's, TensorFlow's, a TPU's, `CuPy`'s or Numba's. (The line used to be
/// PyTorch's for every form.)
#[test]
fn a_message_without_figures_points_at_its_own_frameworks_figures() {
    let line = |msg: &str| {
        let e = explain(msg).unwrap();
        assert!(e.figures.is_empty(), "{msg}: {:?}", e.figures);
        let text = e.text();
        let line = text
            .lines()
            .find(|l| l.starts_with("- no figures"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string();
        (e, line)
    };
    let (_, pytorch) = line("RuntimeError: CUDA error: out of memory");
    assert!(pytorch.contains("torch.cuda.memory_summary()"), "{pytorch}");
    let (jax, l) = line(
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory; the output buffer could not be allocated",
    );
    assert_eq!(jax.form, Form::Jax);
    // "output" is no TPU.
    assert!(!jax.tpu);
    assert!(
        l.contains("jax.devices()[0].memory_stats()") && l.contains("nvidia-smi"),
        "{l}"
    );
    let (tpu, l) =
        line("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: TPU ran out of memory");
    assert!(tpu.tpu);
    assert!(
        l.contains("memory_stats()") && !l.contains("nvidia-smi"),
        "{l}"
    );
    let (tf, l) = line(
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: failed to allocate memory [Op:AddV2]",
    );
    assert_eq!(tf.form, Form::Tensorflow);
    assert!(l.contains("tf.config.experimental.get_memory_info"), "{l}");
    let (_, l) = line(
        "numba.cuda.cudadrv.driver.CudaAPIError: [2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY",
    );
    assert!(l.contains("get_memory_info()"), "{l}");
    for l in [&l, &tpu.text(), &tf.text(), &jax.text()] {
        assert!(!l.contains("torch"), "{l}");
    }
}

/// XLA's TPU compiler says what the program needs against what a core has, what the runtime
/// reserves and the largest allocations; its runtime, the request against what the core had
/// free. Each framework on a TPU gets its own sharding, recomputation and bf16; VMEM, a
/// kernel's on-chip memory, gets the kernel's fixes instead of the batch's.
#[test]
fn a_tpus_figures_are_read_and_each_framework_gets_its_tpu_fixes() {
    let compile = "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 8.83G of 8.00G hbm. Exceeded hbm capacity by 848.88M.";
    let jax = explain(&format!("jaxlib.xla_extension.XlaRuntimeError: {compile}")).unwrap();
    assert_eq!(jax.form, Form::Jax);
    assert_eq!(
        (jax.needed_bytes, jax.space_capacity_bytes),
        (bytes("8.83", "GiB"), Some(8 << 30))
    );
    assert_eq!(jax.total_capacity_bytes, Some(8 << 30));
    // Not a GPU's capacity: no preset, no "the GPU's memory".
    assert_eq!(jax.gpu, None);
    assert_eq!(
        jax.figures[0],
        "needs 8.83 GiB of 8.00 GiB HBM: what the compiled program needs, against what one TPU core's memory has for it — 848.88 MiB over"
    );
    assert!(
        jax.advice[0].contains("1.10× the 8.00 GiB one core has"),
        "{:?}",
        jax.advice
    );
    let torch_xla = explain(&format!("RuntimeError: Bad StatusOr access: {compile}")).unwrap();
    assert_eq!(torch_xla.form, Form::TorchXla);
    assert!(torch_xla.tpu);
    let tf = explain(&format!(
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: {compile}"
    ))
    .unwrap();
    assert_eq!(tf.form, Form::Tensorflow);
    assert!(tf.tpu);
    // Its heading quotes XLA's form, not TensorFlow's GPU allocator's.
    let heading = tf.heading();
    assert!(
        heading.contains("RESOURCE_EXHAUSTED") && !heading.contains("OOM when allocating"),
        "{heading}"
    );
    let all = |e: &Explanation| e.advice.join("\n");
    for (e, own, others) in [
        (
            &jax,
            vec!["jax.sharding", "jax.checkpoint", "jnp.bfloat16"],
            vec!["torch", "tf."],
        ),
        (
            &torch_xla,
            vec![
                "torch_xla.distributed.spmd",
                "torch_xla.utils.checkpoint",
                "torch.autocast(\"xla\"",
            ],
            vec!["jax", "tf."],
        ),
        (
            &tf,
            vec!["TPUStrategy", "tf.recompute_grad", "mixed_bfloat16"],
            vec!["jax", "torch", "set_memory_growth", "nvidia-smi"],
        ),
    ] {
        let text = all(e);
        for w in own {
            assert!(text.contains(w), "{w} missing: {text}");
        }
        for w in others {
            assert!(!text.contains(w), "{w} in: {text}");
        }
        assert!(text.contains("more TPU cores"), "{text}");
    }
    // The runtime's form: the request against what the core had free, and freeing comes next.
    let buffer = explain("XlaRuntimeError: RESOURCE_EXHAUSTED: Error allocating device buffer: Attempting to allocate 4.39G. That was not possible. There are 2.30G free.; (0x0x0_HBM0)").unwrap();
    assert!(buffer.tpu);
    assert_eq!(
        (buffer.tried_to_allocate_bytes, buffer.free_bytes),
        (bytes("4.39", "GiB"), bytes("2.30", "GiB"))
    );
    assert!(
        buffer.advice[1].starts_with(
            "free what this core already holds: it had 2.30 GiB free for a request of 4.39 GiB"
        ),
        "{:?}",
        buffer.advice
    );
    // VMEM: the kernel, not the batch; no capacity to size a batch under.
    let vmem = explain("RuntimeError: Bad StatusOr access: RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space vmem. Used 32.42M of 16.00M vmem. Exceeded vmem capacity by 16.42M").unwrap();
    assert_eq!(vmem.memory_space.as_deref(), Some("vmem"));
    assert_eq!(vmem.total_capacity_bytes, None);
    assert!(
        vmem.advice[0].starts_with("look at the kernel, not the batch"),
        "{:?}",
        vmem.advice
    );
    assert!(all(&vmem).contains("vmem_limit_bytes") && all(&vmem).contains("torch_xla"));
    assert!(
        !vmem
            .advice
            .iter()
            .any(|a| a.starts_with("use a smaller batch"))
    );
    assert!(
        vmem.heading().contains("on-chip vector memory"),
        "{}",
        vmem.heading()
    );
}

/// `CuPy` and Numba get their own libraries' fixes, never PyTorch's or the Trainer's: a limit set
/// on `CuPy`'s pool comes first when the request met it, the request itself when the pool held
/// less than it.
#[test]
fn cupy_and_numba_get_their_own_fixes() {
    let never = [
        "PYTORCH_CUDA_ALLOC_CONF",
        "per_device_",
        "gradient_checkpointing",
        "Trainer",
    ];
    let clean = |e: &Explanation| {
        for a in &e.advice {
            for w in never {
                assert!(!a.contains(w), "'{w}' in {a}");
            }
        }
    };
    let limited = explain("cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 1,073,741,824 bytes (allocated so far: 10,737,418,240 bytes, limit set to: 11,000,000,000 bytes).").unwrap();
    assert_eq!(limited.form, Form::Cupy);
    assert_eq!(
        (
            limited.tried_to_allocate_bytes,
            limited.pool_bytes,
            limited.allowed_bytes
        ),
        (Some(1 << 30), Some(10 << 30), Some(11_000_000_000))
    );
    assert!(
        limited.advice[0].starts_with("raise the limit set on CuPy's pool"),
        "{:?}",
        limited.advice
    );
    assert!(
        limited.advice[1].contains("still held 10.00 GiB in arrays alive"),
        "{:?}",
        limited.advice
    );
    clean(&limited);
    // A limit the request did not meet is not what failed.
    let under = explain("cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 1,024 bytes (allocated so far: 2,048 bytes, limit set to: 11,000,000,000 bytes).").unwrap();
    assert!(
        !under.advice.iter().any(|a| a.contains("raise the limit")),
        "{:?}",
        under.advice
    );
    // The pool held less than the request: the request is what to make smaller.
    let big = explain("cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 200,000,000,000 bytes (allocated so far: 4,096 bytes).").unwrap();
    assert!(
        big.advice[0].starts_with("work in smaller pieces"),
        "{:?}",
        big.advice
    );
    assert!(
        big.advice[1].contains("its pool held only 4.00 KiB"),
        "{:?}",
        big.advice
    );
    assert!(big.advice.iter().any(|a| a.contains("cupy.float32")));
    clean(&big);
    let numba = explain("numba.cuda.cudadrv.driver.CudaAPIError: [2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY").unwrap();
    assert_eq!(numba.form, Form::Numba);
    assert!(numba.advice.iter().any(|a| a.contains("cuda.device_array")));
    assert!(!numba.advice.iter().any(|a| a.contains("RAPIDS (cuDF")));
    clean(&numba);
    let rapids = explain("File \"/envs/cudf/lib/python3.7/site-packages/numba/cuda/cudadrv/driver.py\"\nCudaAPIError: [2] Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY").unwrap();
    assert_eq!(rapids.form, Form::Numba);
    assert!(
        rapids
            .advice
            .iter()
            .any(|a| a.contains("dask_cuda.LocalCUDACluster"))
    );
}
