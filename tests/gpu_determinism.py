"""GPU determinism of every op type in the project's compiled steps, under TF 2.21's op determinism.

`tesla_tf.distill.loop.distill` calls `tf.config.experimental.enable_op_determinism()`. On a GPU, TF
then either runs each op deterministically or raises `UnimplementedError`, and a few ops are known to
stay nondeterministic without raising. This table records, for each op type in the traced graphs, what
the op does on a GPU under op determinism. tests/test_determinism.py fails when a graph holds an op
type that is not in the table, or one whose status is in RISKY. docs/scaling.md, section "GPU
determinism", summarises the findings.

Each entry is Op(status, note, sources, xla):
  status   "deterministic"      the GPU kernel gives the same output on every run.
           "host_copy"          deterministic, but TF computes it on the CPU. Every call copies the
                                operands to host memory and the result back, with host syncs. This is
                                a performance risk, not a correctness one.
           "raises"             UnimplementedError on a GPU once op determinism is on.
           "nondeterministic"   no error, but the results can vary from run to run on a GPU.
  note     why, and where the op comes from in this project.
  sources  keys of SOURCES.
  xla      the status inside a jit_compile=True function when it differs from `status`, else None.

No GPU was available; every status comes from the sources. The TF kernel files were read in stored
copies of TF's source from after 2.13, not at the v2.21.0 tag. The strings marked "found with
`strings`" were read from the installed TF 2.21 wheel.
"""

import collections

Op = collections.namedtuple("Op", ["status", "note", "sources", "xla"], defaults=[None])

STATUSES = ("deterministic", "host_copy", "raises", "nondeterministic")
# host_copy counts too: deterministic, but a round trip through the host at every call. The two such ops
# the steps had (TensorScatterAdd, ScatterNd) became segment sums on 2026-12-02.
RISKY = ("raises", "nondeterministic", "host_copy")

_TF = "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/core/kernels/"
SOURCES = {
    "docstring": "Docstring of tf.config.experimental.enable_op_determinism in TF 2.21 (.venv/lib/python3.11/"
                 "site-packages/tensorflow/python/framework/config.py): ops run deterministically or raise "
                 "UnimplementedError, and a few may be nondeterministic because of bugs. It names no op.",
    "rfc": "The TF determinism RFC lists the ops known to be nondeterministic on GPU: https://github.com/"
           "tensorflow/community/blob/master/rfcs/20210119-determinism.md (tensorflow/community PRs 346, "
           "370 and 386).",
    "notes_2.8": "TF 2.8.0 RELEASE.md, 'Deterministic Op Functionality': "
                 "https://github.com/tensorflow/tensorflow/blob/v2.8.0/RELEASE.md",
    "nvidia": "NVIDIA framework-reproducibility, 'Status of GPU-Determinism in TensorFlow': "
              "https://github.com/NVIDIA/framework-reproducibility/blob/master/doc/d9m/tensorflow_status.md",
    "segment_kernel": _TF + "segment_reduction_ops_gpu.cu.h, UnsortedSegmentFunctor<GPUDevice>. When "
                      "OpDeterminismRequired() and the reduction is not associative (float sums), it "
                      "radix-sorts the ids and calls SegmentReduceGPU, not the atomicAdd kernel "
                      "(TF PRs 51392 and 51861, TF 2.7).",
    "scatter_nd_kernel": _TF + "scatter_nd_op.cc, functor::DoScatterNd. On GPU with OpDeterminismRequired() "
                         "it calls DoScatterNdOnCpu: that copies the indices, the updates and the whole "
                         "output to the host, scatters there, copies the output back and blocks the host "
                         "twice (TF commit 03ba364).",
    "resource_scatter_kernel": _TF + "resource_variable_ops.cc, DoScatter (ResourceScatterAdd and the other "
                               "ResourceScatter* ops). On GPU with OpDeterminismRequired() it calls "
                               "DoScatterOnCpu: the whole variable goes to the host and back. Otherwise it "
                               "would use GpuAtomicAdd (scatter_functor_gpu.cu.h).",
    "xent_python": ".venv/lib/python3.11/site-packages/tensorflow/python/ops/nn_ops.py: when "
                   "config.is_op_determinism_enabled(), softmax_cross_entropy_with_logits_v2 and "
                   "_sparse_softmax_cross_entropy_with_rank_2_logits build log_softmax (and a gather) "
                   "instead of the fused kernel. The fused GPU kernels raise under op determinism (TF PR "
                   "47925); their message says the Python API uses an alternative, deterministic, "
                   "GPU-accelerated path.",
    "avgpool_kernel": _TF + "avgpooling_op.cc, AvgPoolingGradOp<GPUDevice>. In NHWC it runs "
                      "AvePoolBackwardNHWC (avgpooling_op_gpu.cu.cc): each input gradient sums its own "
                      "windows in a fixed order, with no atomics. Otherwise it runs cuDNN average-pooling "
                      "backward. The NVIDIA page lists only max-pooling backward as nondeterministic.",
    "xla_maxpool": "The installed TF 2.21 libtensorflow_cc.so.2 holds the tf2xla error 'GPU MaxPool gradient "
                   "ops do not yet have a deterministic XLA implementation.' (found with `strings`). Users "
                   "report it as UnimplementedError under jit_compile with determinism on.",
    "xla_scatter": "The installed TF 2.21 XLA has the flags xla_gpu_deterministic_ops, "
                   "xla_gpu_exclude_nondeterministic_ops and xla_gpu_enable_scatter_determinism_expander "
                   "(found with `strings`). The NVIDIA page: XLA scatter and reductions on GPU are "
                   "deterministic under enable_op_determinism from TF 2.8 (TF commit 4dc6d4d).",
    "topk_docs": "tf.math.top_k documentation: 'If two elements are equal, the lower-index element appears "
                 "first'. This is the op's contract, not one kernel's behaviour; tf.argsort is top_k.",
    "stateless": "Stateless random ops are counter-based (Philox, ThreeFry): the output depends only on the "
                 "seed, the shape and the algorithm (tf.random.stateless_uniform documentation).",
    "cublas": "cuBLAS documentation, 'Results reproducibility' (https://docs.nvidia.com/cuda/cublas/): by "
              "design, cuBLAS routines of one toolkit version give bitwise-identical results on every run on "
              "GPUs of the same architecture and SM count. TF uses one compute stream per GPU.",
    "elementwise": "Elementwise, data-movement or shape op: each output element is a fixed function of fixed "
                   "input elements, with no accumulation across threads. Not in the RFC or NVIDIA lists.",
    "control": "Control-flow, TensorList or bookkeeping op: it moves handles and tensors and does no "
               "floating-point arithmetic. Not in the RFC or NVIDIA lists.",
    "reduction": _TF + "reduction_gpu_kernels.cu.h: TF's GPU reductions use CUB block and warp reductions. "
                 "Neither the RFC's op review nor the NVIDIA page lists reduce_sum, reduce_mean, argmax, "
                 "softmax or log_softmax.",
}

_E = ("elementwise",)
_C = ("control",)
_R = ("reduction", "rfc", "nvidia")
_SCATTER = ("scatter_nd_kernel", "notes_2.8", "nvidia", "xla_scatter")


def _same(status, note, sources, names):
  return {name: Op(status, note, sources) for name in names}


OPS = {
    **_same("deterministic", "elementwise arithmetic / comparison", _E, (
        "Abs", "AddV2", "BiasAdd", "BitwiseAnd", "BitwiseXor", "Cast", "Cos", "DivNoNan", "Equal", "Exp",
        "Floor", "FloorDiv", "FloorMod", "Greater", "GreaterEqual", "Less", "LessEqual", "Log", "LogicalAnd",
        "LogicalNot", "LogicalOr", "Maximum", "Minimum", "Mul", "MulNoNan", "Neg", "NotEqual", "RealDiv",
        "Relu", "ReluGrad", "RightShift", "Rsqrt", "RsqrtGrad", "Select", "SelectV2", "Sin", "Sqrt",
        "SqrtGrad", "Square", "Sub")),
    "AddN": Op("deterministic", "elementwise sum of N inputs in a fixed order (gradient aggregation)", _E),
    **_same("deterministic", "data movement / shape", _E, (
        "BroadcastTo", "ConcatOffset", "ConcatV2", "Const", "ExpandDims", "Fill", "Identity", "IdentityN",
        "MatrixSetDiagV3", "OnesLike", "Pack", "Pad", "Placeholder", "Range", "Reshape", "Shape", "ShapeN",
        "Slice", "Split", "SplitV", "Squeeze", "StopGradient", "StridedSlice", "StridedSliceGrad", "Tile",
        "Transpose", "Unpack", "ZerosLike")),
    "GatherV2": Op("deterministic", "forward gather (DSA bilinear sampling, minibatch rows, label rows). Its "
                   "gradient is UnsortedSegmentSum, below", ("elementwise", "nvidia")),
    "ResourceGather": Op("deterministic", "forward gather from a variable; not differentiated here",
                         ("elementwise", "nvidia")),
    **_same("deterministic", "variable read / write", _E, (
        "AssignAddVariableOp", "AssignSubVariableOp", "AssignVariableOp", "ReadVariableOp", "VarHandleOp")),
    "ResourceApplyMomentum": Op("deterministic", "elementwise in-place SGD-momentum update of the synthetic "
                                "set (synthetic.sgd_momentum)", _E),
    **_same("deterministic", "control flow / bookkeeping", _C, (
        "Assert", "If", "NoOp", "PartitionedCall", "StatefulPartitionedCall", "StatelessIf", "StatelessWhile",
        "While", "TensorListElementShape", "TensorListFromTensor", "TensorListGetItem", "TensorListLength",
        "TensorListReserve", "TensorListSetItem", "TensorListStack")),
    **_same("deterministic", "stateless RNG (schedule, DSA parameters, evaluation order)", ("stateless",), (
        "StatelessRandomGetKeyCounter", "StatelessRandomNormalV2", "StatelessRandomUniformFullIntV2",
        "StatelessRandomUniformIntV2", "StatelessRandomUniformV2")),
    **_same("deterministic", "reduction", _R, (
        "All", "Any", "ArgMax", "LogSoftmax", "Max", "Mean", "Min", "Prod", "Softmax", "Sum")),
    "TopKV2": Op("deterministic", "tf.argsort in make_schedule and in the evaluation order. Ties go to the "
                 "lower index by contract, and they do occur: float32 keys from stateless_uniform give about "
                 "n²/2²⁴ tied pairs, ~150 at n = 50,000", ("topk_docs",) + _R),
    "Unique": Op("deterministic", "int32 rows of the schedule (teacher labels, label statistics); the output "
                 "is in order of first occurrence by contract", _R),
    "MatMul": Op("deterministic", "cuBLAS GEMM; not in the RFC or NVIDIA lists", ("cublas", "rfc", "nvidia")),
    **_same("deterministic", "cuDNN: under op determinism TF picks only deterministic algorithms (TF 2.8+)",
            ("nvidia",), ("Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")),
    "BiasAddGrad": Op("deterministic", "atomicAdd by default; under op determinism TF uses a deterministic "
                      "reduction (TF PR 31465, TF 2.1+)", ("nvidia",)),
    "AvgPool": Op("deterministic", "forward window mean, no accumulation across threads",
                  ("avgpool_kernel",)),
    "AvgPoolGrad": Op("deterministic", "gather-form kernel (NHWC) or cuDNN average backward",
                      ("avgpool_kernel", "nvidia")),
    "MaxPool": Op("deterministic", "forward window max (AlexNet and VGG11 evaluation only)", ("nvidia",)),
    "MaxPoolGrad": Op("deterministic", "cuDNN deterministic max-pooling backward under op determinism "
                      "(AlexNet and VGG11 evaluation only). Under jit_compile on GPU, tf2xla raises instead",
                      ("nvidia", "xla_maxpool"), xla="raises"),
    "UnsortedSegmentSum": Op("deterministic", "tf.gather's gradient made dense (DSA resampling, minibatch "
                             "and label rows, the experts' sparse cross-entropy under determinism). Under op "
                             "determinism the GPU kernel sorts the ids and reduces the segments without "
                             "atomics. It stays on the GPU, but is slower than the atomic kernel",
                             ("segment_kernel", "notes_2.8", "nvidia")),
    # Scatter-adds: deterministic on GPU only by a host round trip.
    "TensorScatterAdd": Op("host_copy", "matching._two_passes added each student step's image (and "
                           "learned-label) gradient into the [n, ...] buffer with tf.tensor_scatter_nd_add "
                           "until 2026-12-02 (now: the steps' rows, one unsorted_segment_sum). Under op "
                           "determinism on GPU, every step copied the whole buffer to the host and back: "
                           "2.46 GB each way at ImageNet-1K IPC 50, 64 px", _SCATTER,
                           xla="deterministic"),
    "ScatterNd": Op("host_copy", "labels.teacher_labels_for_schedule scattered the teacher rows into [n, C] "
                    "with tf.scatter_nd until 2026-12-02 (now unsorted_segment_sum of the unique rows): on "
                    "the host, and the whole [n, C] copied back (200 MB at ImageNet-1K IPC 50)", _SCATTER,
                    xla="deterministic"),
    "TensorScatterUpdate": Op("host_copy", "same kernel family as TensorScatterAdd; not used", _SCATTER,
                              xla="deterministic"),
    "ResourceScatterNdAdd": Op("host_copy", "same kernel family; the whole variable goes to the host and "
                               "back; not used", _SCATTER, xla="deterministic"),
    "ResourceScatterAdd": Op("host_copy", "not used. It is the obvious in-place alternative to "
                             "TensorScatterAdd, but under op determinism on GPU it also sends the whole "
                             "variable to the host and back", ("resource_scatter_kernel", "xla_scatter"),
                             xla="deterministic"),
    # Known to raise or to be nondeterministic. None of these is in our graphs today; they are listed so
    # that one that appears fails by name and not as an unknown op.
    "SoftmaxCrossEntropyWithLogits": Op("raises", "fused GPU kernel. The Python API avoids it only when "
                                        "determinism is on at trace time", ("xent_python", "nvidia")),
    "SparseSoftmaxCrossEntropyWithLogits": Op("raises", "fused GPU kernel: the experts' integer-label loss "
                                              "when traced without determinism. The Python API avoids it "
                                              "when determinism is on", ("xent_python", "nvidia")),
    **_same("raises", "no deterministic GPU kernel; raises (TF 2.6+ / 2.7+)", ("nvidia", "rfc"), (
        "AdjustContrastv2", "Bincount", "CropAndResizeGradBoxes", "CropAndResizeGradImage", "DenseBincount",
        "ResizeNearestNeighborGrad", "SparseTensorDenseMatMul")),
    "FusedBatchNormGradV3": Op("raises", "backprop to offset with is_training=False raises (TF 2.7+). The "
                               "project's norms are hand-written instance norms", ("nvidia",)),
    "DebugNumericSummaryV2": Op("raises", "the CONCISE_HEALTH and FULL_HEALTH modes raise on GPU",
                                ("nvidia",)),
}
