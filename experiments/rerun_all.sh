#!/usr/bin/env bash
# Re-runs every result the READMEs quote, on this machine, in one go, then re-renders the
# READMEs and tables from the new files (python -m experiments.report --figures).
#
#   experiments/rerun_all.sh                 # everything: timing, numerical, course
#   experiments/rerun_all.sh timing          # only the timing benchmarks
#   experiments/rerun_all.sh numerical course
#
# Run it from a clean checkout (each results.json records the commit and whether files differed
# from it) on an otherwise idle machine: the timing benchmarks compare two frameworks stepping
# in one process, and anything else running moves their numbers. Expected duration on a quiet
# 2-core CPU (AMD EPYC class): timing ~2 h 15 min (45 min of it the zoo, 30 the ResNets at 224x224),
# numerical ~1 h, course ~1 h 15 min and the notebooks ~10 min; about 4 h 45 min in all. Each step
# prints its wall-clock seconds; a failing step stops the script (set -e), and what finished
# before it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
R=experiments/results
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(timing numerical course)

step() {
    echo "== $*"
    local start=$SECONDS
    "$@"
    echo "   $((SECONDS - start)) s"
}

want() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

if want timing; then
    # The headline table with today's defaults and the plain flax.linen peers (~30 min), then its
    # side runs at batch 128, each setting off and on back to back (~5 min each; the peers are
    # not their subject, so they are left out).
    step python -m experiments.bench_vs_torch --memory --conv-budget
    step env CNN_JAX_XLA_DEFAULTS=0 python -m experiments.bench_vs_torch --batch-sizes 128 \
        --no-flax --out $R/bench_vs_torch/b128_off
    step python -m experiments.bench_vs_torch --batch-sizes 128 --no-flax \
        --out $R/bench_vs_torch/b128_on
    step env CNN_JAX_MALLOC_DEFAULTS=0 python -m experiments.bench_vs_torch --batch-sizes 128 \
        --no-flax --out $R/bench_vs_torch/b128_malloc_off
    # The pair differs in mallopt's reuse alone: CNN_JAX_MALLOC_DEFAULTS=0 also means no huge pages.
    step env CNN_JAX_HUGE_PAGES=0 python -m experiments.bench_vs_torch --batch-sizes 128 \
        --no-flax --out $R/bench_vs_torch/b128_malloc_on
    step python -m experiments.bench_vs_torch --batch-sizes 128 --compute-dtype bfloat16 \
        --out $R/bench_vs_torch/b128_bf16
    step python -m experiments.bench_vs_torch --roofline --batch-sizes 128 --no-flax \
        --out $R/bench_vs_torch/b128_roof
    step python -m experiments.bench_vs_torch --models resnet18 --batch-sizes 128 --no-flax \
        --conv-backend xla --out $R/bench_vs_torch/b128_conv_xla
    # Every torchvision family at 64x64, batch 32 (~30-45 min); the convolution budget of the
    # families below torch's speed in the zoo table (~15 min), and of two of them under 'xla'.
    step python -m experiments.bench_vs_torch --zoo --memory
    step env CNN_JAX_DISPATCH=sync python -m experiments.bench_vs_torch --zoo --memory \
        --out $R/bench_vs_torch/zoo_sync
    step python -m experiments.bench_vs_torch --zoo --models resnet18 convnext_tiny mobilenet_v2 \
        regnet_y_400mf efficientnet_b0 densenet121 mnasnet0_5 vgg11 regnet_x_400mf \
        --conv-budget --blocks 3 --out $R/bench_vs_torch/zoo_budget
    step python -m experiments.bench_vs_torch --zoo --models regnet_y_400mf mobilenet_v2 \
        --conv-budget --blocks 3 --conv-backend xla --out $R/bench_vs_torch/zoo_budget_xla
    # ResNet-18/50 at 224x224, batch 16, and ResNet-50 at batch 128, 32x32 (~15 min); both
    # ResNets' convolution budgets at 224x224 (~10 min), and ResNet-50's step with YNNPACK's
    # convolutions (~5 min).
    step python -m experiments.bench_vs_torch --zoo --models resnet18 resnet50 --size 224 \
        --batch-sizes 16 --memory --out $R/bench_vs_torch/resnet_224
    step python -m experiments.bench_vs_torch --zoo --models resnet50 --size 32 \
        --batch-sizes 128 --memory --out $R/bench_vs_torch/resnet50_b128
    step python -m experiments.bench_vs_torch --zoo --models resnet18 resnet50 --size 224 \
        --batch-sizes 16 --conv-budget --blocks 3 --out $R/bench_vs_torch/resnet_224_budget
    step env CNN_JAX_XLA_DEFAULTS=0 python -m experiments.bench_vs_torch --zoo --models resnet50 \
        --size 224 --batch-sizes 16 --blocks 3 --out $R/bench_vs_torch/resnet50_224_xla_off
    # Convolutions alone (~20 min), start-up and the default job (~2 min), the loop's checks
    # (~10 min), the styles' cost in fresh processes (~15 min).
    step python -m experiments.bench_conv_backends --batch 128
    step python -m experiments.bench_conv_backends --batch 128 --parts
    step env CNN_JAX_XLA_DEFAULTS=0 python -m experiments.bench_conv_backends --batch 128 \
        --parts --out $R/bench_conv_backends_parts_xla_off
    # Train-mode BatchNorm's derivative rule against autodiff and torch (~5 min).
    step python -m experiments.bench_batch_norm
    # Residual block outputs stored once against recomputed by XLA's fusions (~15 min).
    step python -m experiments.bench_materialize
    # Depthwise weight gradients in chunks and GELU's derivative rule, layers and steps (~10 min).
    step python -m experiments.bench_backward_rules
    # The step's gradient norm with its own squares against optax's, merged with AdamW's (~6 min).
    step python -m experiments.bench_grad_norm
    # AdamW over one flat vector (optax.flatten) against AdamW array by array (~8 min).
    step python -m experiments.bench_flat_adamw
    # The course models' steps run 1, 4 and 16 to a call, and as a loop, beside torch (~10 min).
    step python -m experiments.bench_steps_per_call
    # Copy insertion with XLA's region analysis against its default analysis (~10 min).
    step python -m experiments.bench_copy_insertion
    # The state's kernels in the step's layout (HWIO) against torch's (~30 min).
    step python -m experiments.bench_kernel_layout
    # DenseNet's stored pooling gradient against none and every max pooling's (~15 min).
    step python -m experiments.bench_pool_gradient --blocks 10
    # Convolutions that are mostly padding tap by tap against the rule off (~8 min).
    step python -m experiments.bench_padding_taps
    # Small-map grouped convolutions unfolded against batched im2col (~6 min).
    step python -m experiments.bench_unfolded_groups
    # Small-map depthwise convolutions with large kernels unfolded against tap by tap (~20 min).
    step python -m experiments.bench_unfolded_depthwise
    # Large kernels' weight gradients stored once against none and all stored (~15 min).
    step python -m experiments.bench_weight_gradients
    # TCMalloc, dispatch and huge pages, five settings, steps and the run loop, in processes (~40 min).
    step python -m experiments.bench_dispatch --rounds 3
    step python -m experiments.bench_startup --repeats 5
    step python -m experiments.bench_run_safety --epochs 6 --repeats 5
    step python -m experiments.functional_vs_stateful --parts cost
fi

if want numerical; then
    # Deterministic on a given machine; they differ between CPUs (float32 rounding).
    # gradient_precision holds vgg16_bn in float32 and float64 several times over: it needs
    # about 13 GB of free memory.
    step python -m experiments.functional_vs_stateful --parts agreement dropout
    step python -m experiments.gradient_precision --seeds 8
    step python -m experiments.gradient_precision --kinks --isolate features.11
    # Accuracy of pixel sums and a GoogLeNet miniature over 8 seeds, and what a cascade costs.
    step python -m experiments.float32_sums
fi

if want course; then
    for name in filters_and_feature_maps mlp_vs_cnn regularisation optimisers batch_norm \
        activations early_stopping transfer_learning spurious_cue gap_vs_flatten; do
        step python -m experiments.course.$name
    done
fi

step python -m experiments.report --figures
# The notebooks quote the course's results files (their commands and numbers): rebuild them
# from the new files (~10 min), or their stored outputs go stale and tests/test_notebooks.py fails.
if want course; then
    step python notebooks/build.py
fi
echo "done: review 'git diff README.md experiments/ notebooks/' and commit experiments/results/ with it"
