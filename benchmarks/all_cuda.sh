#!/usr/bin/env bash
# Every side-by-side benchmark on a CUDA GPU, in one go: the numbers recorded in README.md
# ("On a GPU"). Usage: benchmarks/all_cuda.sh OUT_DIR [PYTHON] [PART...]
# PART is any of: check syncs run perturbation lrp faithfulness robustness randomisation
# surrogates floor (every metric against its floor: issue 6's target; floor_lite0 and
# floor_shapes run one model each) (default: all). syncs: the waits for the device per chunk of
# every method and metric (sync_count.py --device cuda; 0 expected but for ROAD and MPRT). STEP_TIMEOUT=SECONDS stops a part that runs longer (default: no
# limit). Each part's JSON and log land in OUT_DIR; the last lines of each log are its table.
# Peers (Captum, Quantus, pytorch-grad-cam) must be importable.
set -u
out=${1:?usage: benchmarks/all_cuda.sh OUT_DIR [PYTHON] [PART...]}
py=${2:-python3}
shift $(($# < 2 ? $# : 2))
parts=${*:-check syncs run perturbation lrp faithfulness robustness randomisation surrogates floor}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: run, log, keep going on failure
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    timeout "${STEP_TIMEOUT:-0}" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "=== $name: exit $rc, $((SECONDS - start)) s"
}

for part in $parts; do
    case $part in
    check) step check "$py" scripts/gpu_check.py --device cuda --out "$out/gpu_check.json" \
        --models "${GPU_CHECK_MODELS:-shapes_cnn,shapes_vit,efficientnet_lite0,minilm}" ;;
    syncs) step syncs "$py" benchmarks/sync_count.py --device cuda --metrics all --methods all ;;
    run) step run "$py" benchmarks/run.py --device cuda --repeats 3 --out "$out/run" ;;
    perturbation) step perturbation "$py" benchmarks/perturbation.py --device cuda --repeats 3 \
        --ppe 32,128,512 --out "$out/perturbation.json" ;;
    surrogates) step surrogates "$py" benchmarks/surrogates.py --device cuda --repeats 3 \
        --models lite0 --no-captum-default --out "$out/surrogates" ;;
    lrp) step lrp "$py" benchmarks/lrp.py --device cuda ;;
    faithfulness) step faithfulness "$py" benchmarks/metrics_faithfulness.py --device cuda \
        --repeats 5 --out "$out/metrics_faithfulness.json" ;;
    robustness) step robustness "$py" benchmarks/metrics_robustness.py --device cuda \
        --out "$out/metrics_robustness.json" ;;
    randomisation) step randomisation "$py" benchmarks/metrics_randomisation.py --device cuda \
        --out "$out/metrics_randomisation.json" ;;
    floor) step floor "$py" benchmarks/metrics_floor.py --device cuda --repeats 3 \
        --out "$out/metrics_floor.json" ;;
    floor_lite0 | floor_shapes)
        model=$([ "$part" = floor_lite0 ] && echo efficientnet_lite0 || echo shapes_cnn)
        step "$part" "$py" benchmarks/metrics_floor.py --device cuda --repeats 3 --models "$model" \
            --out "$out/$part.json" ;;
    *) echo "unknown part $part" ;;
    esac
done
