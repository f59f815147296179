"""ONNX Runtime CPU int8 arithmetic probe (see runtime/ORT_CPU_ARITHMETIC.md).

Self-contained: builds tiny ONNX models with onnx.helper, runs onnxruntime's CPUExecutionProvider
and compares the outputs with candidate integer/float32 recipes written in numpy. Prints the CPU
flags and versions first, since the u8 x s8 results depend on the CPU (VNNI or not).

    python benchmarks/ort_probe.py            # all sections
    python benchmarks/ort_probe.py gemm conv  # some sections: env gemm conv requant quantize
                                              # elementwise fusion quantize_static shufflenet
"""
import collections, os, platform, sys, tempfile
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP, helper as h, numpy_helper as nh

f32 = np.float32
NP2TP = {np.dtype('uint8'): TP.UINT8, np.dtype('int8'): TP.INT8, np.dtype('int32'): TP.INT32,
         np.dtype('float32'): TP.FLOAT, np.dtype('int16'): TP.INT16, np.dtype('uint16'): TP.UINT16}
SHUFFLENET = '/work/shared/data/onnx/shufflenet-v2-12-int8/shufflenet-v2-12-int8.onnx'
ort.set_default_logger_severity(3)


def run(nodes, inputs, outputs, inits=(), opset=21, opt=True, ms=True):
    """One-shot session. inputs: name->array (graph inputs); inits: name->array; outputs: [(name, dtype)]."""
    gi = [h.make_tensor_value_info(n, NP2TP[a.dtype], a.shape) for n, a in inputs.items()]
    go = [h.make_tensor_value_info(n, NP2TP[np.dtype(d)], None) for n, d in outputs]
    ini = [nh.from_array(np.asarray(a), n) for n, a in dict(inits).items()]
    ops = [h.make_opsetid('', opset)] + ([h.make_opsetid('com.microsoft', 1)] if ms else [])
    m = h.make_model(h.make_graph(nodes, 'g', gi, go, ini), opset_imports=ops)
    m.ir_version = 10
    so = ort.SessionOptions()
    if not opt:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=['CPUExecutionProvider'])
    r = s.run(None, inputs)
    return r if len(r) > 1 else r[0]


def optimized_node_types(model, opt_level=None):
    """Node types of the graph ORT actually runs (session option optimized_model_filepath)."""
    p = tempfile.mktemp(suffix='.onnx')
    so = ort.SessionOptions()
    so.optimized_model_filepath = p
    if opt_level is not None:
        so.graph_optimization_level = opt_level
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    ort.InferenceSession(data, so, providers=['CPUExecutionProvider'])
    om = onnx.load(p)
    os.remove(p)
    return [(n.domain + '.' if n.domain else '') + n.op_type for n in om.graph.node], om


def section_env():
    print('== environment ==')
    flags = set()
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('flags'):
                flags |= set(line.split(':', 1)[1].split())
    except OSError:
        pass
    model = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?') \
        if os.path.exists('/proc/cpuinfo') else platform.processor()
    print('cpu:', model)
    print('flags of interest:', sorted(flags & {'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx_vnni',
                                                'amx_int8', 'avx_vnni_int8'}))
    print('onnxruntime', ort.__version__, '| onnx', onnx.__version__, '| numpy', np.__version__,
          '| machine', platform.machine())
    print()


# ----------------------------------------------------------------------------------------------
# Integer GEMM models: exact, and "pair saturation" (products k=2j,2j+1 of the raw (not zero-point
# shifted) operands summed and saturated to int16, then accumulated in int32; zero-point terms
# added exactly: acc = raw - za*colsum(B) - zb*rowsum(A) + K*za*zb).
# ----------------------------------------------------------------------------------------------
def sim_gemm(A, B, za, zb, sat):
    A = A.astype(np.int64); B = B.astype(np.int64)
    M, K = A.shape; N = B.shape[1]
    P = A[:, :, None] * B[None, :, :]
    if sat:
        if K % 2:
            P = np.concatenate([P, np.zeros((M, 1, N), np.int64)], 1)
        P = np.clip(P[:, 0::2] + P[:, 1::2], -32768, 32767)
    raw = P.sum(1)
    zb = np.broadcast_to(np.asarray(zb, np.int64), (N,))
    return raw - za * B.sum(0)[None] - zb[None] * A.sum(1)[:, None] + K * za * zb[None]


def requant(acc, scale, zy, lo=0, hi=255):
    """MlasRequantizeOutput: float32(acc [+bias already added]) * float32 scale, clamp to
    [lo-zy, hi-zy] in float, round half to even (cvtps2dq), + zy."""
    f = acc.astype(f32) * np.asarray(scale, f32)
    return np.clip(np.rint(f), lo - zy, hi - zy).astype(np.int64) + zy


def verdict(y, ex, st):
    return ('exact' if (y == ex).all() else '') + (' pairsat' if (y == st).all() else '') + \
        ('  NEITHER' if not ((y == ex).all() or (y == st).all()) else '')


def section_gemm():
    rng = np.random.default_rng(0)
    print('== Q1a: MatMulInteger (raw int32 accumulator) vs exact / pair-saturation model ==')
    for ta, tb in [('uint8', 'int8'), ('uint8', 'uint8'), ('int8', 'int8'), ('int8', 'uint8')]:
        for M, K, N in [(1, 7, 5), (4, 33, 9), (64, 256, 64)]:
            for init in (True, False):
                for zbk in ('zero', 'scalar', 'percol'):
                    ia, ib = np.iinfo(ta), np.iinfo(tb)
                    A = rng.integers(ia.min, ia.max + 1, (M, K)).astype(ta)
                    B = rng.integers(ib.min, ib.max + 1, (K, N)).astype(tb)
                    za = int(rng.integers(ia.min, ia.max + 1))
                    zb = {'zero': np.zeros((), tb), 'scalar': np.array(rng.integers(ib.min, ib.max + 1), tb),
                          'percol': rng.integers(ib.min, ib.max + 1, N).astype(tb)}[zbk]
                    ins = {'A': A}; ini = {'za': np.array(za, ta), 'zb': zb}
                    (ini if init else ins)['B'] = B
                    y = run([h.make_node('MatMulInteger', ['A', 'B', 'za', 'zb'], ['Y'])], ins, [('Y', 'int32')], ini)
                    ex = sim_gemm(A, B, za, zb, False); st = sim_gemm(A, B, za, zb, True)
                    print(f'  MatMulInteger {ta}x{tb} MKN={(M, K, N)} B={"init" if init else "input"} zb={zbk:6s}:',
                          verdict(y, ex, st), f'(#outputs where exact!=pairsat: {(ex != st).sum()})')
    # Known single values
    y = run([h.make_node('MatMulInteger', ['A', 'B'], ['Y'])], {'A': np.full((1, 2), 255, np.uint8)},
            [('Y', 'int32')], {'B': np.full((2, 1), 127, np.int8)})
    print('  MatMulInteger u8 255 x s8 127, K=2 ->', int(y.ravel()[0]), '(exact 64770)')

    print('== Q1b: QLinearMatMul / QGemm / DynamicQuantizeMatMul (requantized) vs models ==')
    for ta, tb in [('uint8', 'int8'), ('uint8', 'uint8'), ('int8', 'int8')]:
        for pc in (False, True):
            M, K, N = 16, 64, 24
            ia, ib = np.iinfo(ta), np.iinfo(tb)
            A = rng.integers(ia.min, ia.max + 1, (M, K)).astype(ta)
            B = rng.integers(ib.min, ib.max + 1, (K, N)).astype(tb)
            za = int(rng.integers(ia.min, ia.max + 1)) if ta == 'uint8' else 3
            zb = np.zeros(N if pc else (), tb) if tb == 'int8' else np.full(N if pc else (), 128, tb)
            ex = sim_gemm(A, B, za, zb, False); st = sim_gemm(A, B, za, zb, True)
            sa = f32(0.02)
            sb = (rng.uniform(0.5, 1.0, N) if pc else np.array(0.8)).astype(f32) * f32(250.0 / (ex.max() - ex.min())) / sa
            sb = sb.astype(f32); sy = f32(1.0)
            zy = 128 if ta == 'uint8' else 0
            lo, hi = (0, 255) if ta == 'uint8' else (-128, 127)
            scale = (sa * sb / sy).astype(f32)
            off = int(-(ex.max() + ex.min()) // 2)  # centre: added through za? no: use QGemm bias below
            n = h.make_node('QLinearMatMul', ['a', 'sa', 'za', 'b', 'sb', 'zb', 'sy', 'zy'], ['y'])
            y = run([n], {'a': A}, [('y', ta)], {'sa': sa, 'za': np.array(za, ta), 'b': B, 'sb': sb, 'zb': zb,
                                                 'sy': sy, 'zy': np.array(zy, ta)}, ms=False).astype(np.int64)
            pe = requant(ex, scale, zy, lo, hi); ps = requant(st, scale, zy, lo, hi)
            print(f'  QLinearMatMul {ta}x{tb} {"per-column" if pc else "per-tensor"}: match exact={np.mean(y == pe):.3f}'
                  f' pairsat={np.mean(y == ps):.3f}')
            if ta == 'int8' and tb == 'int8' and pc:
                continue
            # QGemm with int32 bias (centres the output range)
            bias = np.full(N, off, np.int32)
            n = h.make_node('QGemm', ['a', 'sa', 'za', 'b', 'sb', 'zb', 'c', 'sy', 'zy'], ['y'], domain='com.microsoft')
            y = run([n], {'a': A}, [('y', ta)], {'sa': sa, 'za': np.array(za, ta), 'b': B, 'sb': sb,
                                                 'zb': zb, 'c': bias, 'sy': sy, 'zy': np.array(zy, ta)}).astype(np.int64)
            pe = requant(ex + off, scale, zy, lo, hi); ps = requant(st + off, scale, zy, lo, hi)
            print(f'  QGemm         {ta}x{tb} {"per-column" if pc else "per-tensor"} +bias: match exact={np.mean(y == pe):.3f}'
                  f' pairsat={np.mean(y == ps):.3f}')
    # DynamicQuantizeMatMul: A float -> u8 dynamically (DynamicQuantizeLinear), B s8 const
    M, K, N = 8, 64, 16
    Af = rng.normal(0, 1, (M, K)).astype(f32); Af[0, 0] = 4.0; Af[0, 1] = -1.0
    B = rng.integers(-128, 128, (K, N)).astype(np.int8); B[:, 0] = 127
    bs = f32(0.01)
    y = run([h.make_node('DynamicQuantizeMatMul', ['a', 'b', 'bs', 'bz'], ['y'], domain='com.microsoft')], {'a': Af},
            [('y', 'float32')], {'b': B, 'bs': bs, 'bz': np.array(0, np.int8)})
    qa, sa_, za_ = run([h.make_node('DynamicQuantizeLinear', ['a'], ['q', 's', 'z'])], {'a': Af},
                       [('q', 'uint8'), ('s', 'float32'), ('z', 'uint8')], ms=False)
    for name, sat in (('exact', False), ('pairsat', True)):
        acc = sim_gemm(qa, B, int(za_), 0, sat)
        pred = acc.astype(f32) * f32(f32(sa_) * bs)
        print(f'  DynamicQuantizeMatMul u8(dyn) x s8: max|y - {name} model| = {np.abs(y - pred).max():.6g}')
    print()


# ----------------------------------------------------------------------------------------------
# QLinearConv: im2col orders. 'hwc' = reduction vector of one output pixel ordered (kh, kw, c)
# with c fastest (NHWC im2col), padded taps = input zero point (raw); 'chw' = (c, kh, kw).
# ----------------------------------------------------------------------------------------------
def im2col(x, kh, kw, pads, strides, zx, order):
    C, H, W = x.shape
    pt, pl, pb, pr = pads
    xp = np.full((C, H + pt + pb, W + pl + pr), zx, np.int64)
    xp[:, pt:pt + H, pl:pl + W] = x
    OH = (H + pt + pb - kh) // strides[0] + 1; OW = (W + pl + pr - kw) // strides[1] + 1
    cols = []
    for oy in range(OH):
        for ox in range(OW):
            p = xp[:, oy * strides[0]:oy * strides[0] + kh, ox * strides[1]:ox * strides[1] + kw]
            cols.append(p.transpose(1, 2, 0).ravel() if order == 'hwc' else p.ravel())
    return np.array(cols), OH, OW


def conv_acc(x, w, zx, zw, group, pads, strides, mode):
    M, Cg, kh, kw = w.shape; Mg = M // group
    zw = np.broadcast_to(np.asarray(zw, np.int64), (M,))
    outs = []
    for gi in range(group):
        order = 'chw' if mode == 'chw' else 'hwc'
        A, OH, OW = im2col(x[gi * Cg:(gi + 1) * Cg], kh, kw, pads, strides, zx, order)
        ws = w[gi * Mg:(gi + 1) * Mg].astype(np.int64)
        B = (ws.transpose(0, 2, 3, 1) if order == 'hwc' else ws).reshape(Mg, -1).T
        outs.append(sim_gemm(A, B, zx, zw[gi * Mg:(gi + 1) * Mg], mode != 'exact'))
    return np.concatenate(outs, 1).T.reshape(M, OH, OW)


def conv_trial(rng, C, M, k, H, group, pads=(0, 0, 0, 0), strides=(1, 1), wdt='int8', zwk='zero', pc=False,
               data='full', winit=True, xdt='uint8'):
    ia, iw = np.iinfo(xdt), np.iinfo(wdt)
    if data == 'full':
        x = rng.integers(ia.min, ia.max + 1, (C, H, H)).astype(xdt)
        w = rng.integers(iw.min, iw.max + 1, (M, C // group, k, k)).astype(wdt)
    else:  # large magnitudes: nearly every u8 x s8 pair of equal sign saturates
        x = rng.integers(ia.max - 55, ia.max + 1, (C, H, H)).astype(xdt)
        w = (rng.integers(100, 128, (M, C // group, k, k)) * rng.choice([-1, 1], (M, C // group, k, k))).astype(wdt)
    zx = int(rng.integers(ia.min, ia.max + 1))
    zw = np.array({'zero': 0, 'nz': int(rng.integers(iw.min, iw.max + 1))}[zwk], wdt)
    accs = {m: conv_acc(x.astype(np.int64), w.astype(np.int64), zx, int(zw), group, pads, strides, m)
            for m in ('exact', 'hwc', 'chw')}
    ex = accs['exact']
    sx, sy = f32(0.5), f32(1.0)
    if pc:
        sw = np.array([f32(250.0 / max(1, np.ptp(ex[i]))) / sx for i in range(M)], f32) * rng.uniform(0.7, 1, M).astype(f32)
        sw = sw.astype(f32)
    else:
        sw = f32(f32(250.0 / max(1, np.ptp(ex))) / sx)
    scale = (sx * sw / sy).astype(f32)
    bias = (-(ex.reshape(M, -1).min(1) + ex.reshape(M, -1).max(1)) // 2).astype(np.int32)
    zy, lo, hi = (128, 0, 255) if xdt == 'uint8' else (0, -128, 127)
    ins = {'x': x[None]}
    ini = {'sx': sx, 'zx': np.array(zx, xdt), 'sw': np.asarray(sw, f32), 'zw': zw, 'sy': sy,
           'zy': np.array(zy, xdt), 'b': bias}
    (ini if winit else ins)['w'] = w
    n = h.make_node('QLinearConv', ['x', 'sx', 'zx', 'w', 'sw', 'zw', 'sy', 'zy', 'b'], ['y'], group=group,
                    pads=list(pads), strides=list(strides), kernel_shape=[k, k])
    y = run([n], ins, [('y', xdt)], ini)[0].astype(np.int64)
    sc_ = np.broadcast_to(scale, (M,))[:, None, None]
    return {m: np.mean(requant(a + bias[:, None, None], sc_, zy, lo, hi) == y) for m, a in accs.items()}


CONV_CASES = [
    ('1x1 C8 M16 (direct GEMM)', dict(C=8, M=16, k=1, H=5, group=1)),
    ('1x1 C16 M16 zw=0 (ConvSym path)', dict(C=16, M=16, k=1, H=5, group=1)),
    ('1x1 C16 M16 zw!=0', dict(C=16, M=16, k=1, H=5, group=1, zwk='nz')),
    ('3x3 C1 M1 (group=1, Cin=Cout=1 -> depthwise kernel)', dict(C=1, M=1, k=3, H=5, group=1, pads=(1, 1, 1, 1))),
    ('3x3 C1 M8 pad1', dict(C=1, M=8, k=3, H=6, group=1, pads=(1, 1, 1, 1))),
    ('3x3 C3 M16 pad1 stride2 (first layer)', dict(C=3, M=16, k=3, H=7, group=1, pads=(1, 1, 1, 1), strides=(2, 2))),
    ('3x3 C4 M16 pad1 zw=0 (ConvSym)', dict(C=4, M=16, k=3, H=6, group=1, pads=(1, 1, 1, 1))),
    ('3x3 C4 M12 pad1 (Cout%8!=0 -> im2col)', dict(C=4, M=12, k=3, H=6, group=1, pads=(1, 1, 1, 1))),
    ('3x3 C5 M16 pad1', dict(C=5, M=16, k=3, H=6, group=1, pads=(1, 1, 1, 1))),
    ('3x3 C16 M32 pad1 per-channel zw=0 (ConvSym)', dict(C=16, M=32, k=3, H=6, group=1, pads=(1, 1, 1, 1), pc=True)),
    ('3x3 C16 M32 pad1 per-channel zw!=0', dict(C=16, M=32, k=3, H=6, group=1, pads=(1, 1, 1, 1), pc=True, zwk='nz')),
    ('3x3 C16 M32 pad1 W graph input (not const)', dict(C=16, M=32, k=3, H=6, group=1, pads=(1, 1, 1, 1), winit=False)),
    ('3x3 C16 M32 u8 x u8 weights', dict(C=16, M=32, k=3, H=6, group=1, pads=(1, 1, 1, 1), wdt='uint8', zwk='nz')),
    ('3x3 C16 M32 s8 x s8', dict(C=16, M=32, k=3, H=6, group=1, pads=(1, 1, 1, 1), xdt='int8')),
    ('depthwise 3x3 C16 g16 zw=0 (ConvSym depthwise)', dict(C=16, M=16, k=3, H=6, group=16, pads=(1, 1, 1, 1))),
    ('depthwise 3x3 C16 g16 zw!=0', dict(C=16, M=16, k=3, H=6, group=16, pads=(1, 1, 1, 1), zwk='nz')),
    ('depthwise 3x3 C24 g24 per-channel (C%16!=0)', dict(C=24, M=24, k=3, H=6, group=24, pads=(1, 1, 1, 1), pc=True)),
    ('depthwise multiplier 2: C8 g8 M16', dict(C=8, M=16, k=3, H=6, group=8, pads=(1, 1, 1, 1))),
    ('grouped 3x3 C8 g2 M16', dict(C=8, M=16, k=3, H=6, group=2, pads=(1, 1, 1, 1))),
    ('grouped 3x3 C32 g2 M32', dict(C=32, M=32, k=3, H=6, group=2, pads=(1, 1, 1, 1))),
    ('grouped 1x1 C16 g4 M16', dict(C=16, M=16, k=1, H=5, group=4)),
]


def section_conv():
    rng = np.random.default_rng(1)
    print('== Q1c: QLinearConv: fraction of outputs matching each accumulator model ==')
    print('   exact | hwc = pair saturation over (kh,kw,c) c fastest, pads=zx | chw = pair saturation over (c,kh,kw)')
    for label, kw in CONV_CASES:
        for data in ('full', 'big'):
            r = conv_trial(rng, data=data, **kw)
            print(f'  {label:52s} {data:4s} exact={r["exact"]:.3f} hwc={r["hwc"]:.3f} chw={r["chw"]:.3f}')
    # the single-pixel C_in = 1 case from the shared facts file
    n = h.make_node('QLinearConv', ['x', 'sx', 'zx', 'w', 'sw', 'zw', 'sy', 'zy'], ['y'], kernel_shape=[3, 3])
    for M in (1, 2):
        y = run([n], {'x': np.full((1, 1, 3, 3), 255, np.uint8)}, [('y', 'uint8')],
                {'sx': f32(1), 'zx': np.array(0, np.uint8), 'w': np.full((M, 1, 3, 3), 127, np.int8), 'sw': f32(1),
                 'zw': np.array(0, np.int8), 'sy': f32(2000), 'zy': np.array(0, np.uint8)})
        print(f'  x=255 (1x1x3x3), w=127 (M={M}x1x3x3), y_scale 2000: {y.ravel().tolist()}  '
              f'(exact 291465/2000 -> 146; pairsat (4*32767+32385)/2000 -> 82)')
    print()


def section_requant():
    rng = np.random.default_rng(3)
    print('== Q2: requantization (QLinearMatMul K=1 so acc = (a-za)*(b-zb) is known exactly) ==')

    def qlmm(A, B, sa, za, sb, zb, sy, zy):
        n = h.make_node('QLinearMatMul', ['a', 'sa', 'za', 'b', 'sb', 'zb', 'sy', 'zy'], ['y'])
        return run([n], {'a': A}, [('y', 'uint8')], {'sa': f32(sa), 'za': np.array(za, np.uint8), 'b': B,
                   'sb': np.asarray(sb, f32), 'zb': np.asarray(zb, B.dtype), 'sy': f32(sy), 'zy': np.array(zy, np.uint8)}, ms=False)
    forms = {'(sa*sb)/sy': lambda a, b, y: f32(f32(a * b) / y), 'sa*(sb/sy)': lambda a, b, y: f32(a * f32(b / y)),
             '(sa/sy)*sb': lambda a, b, y: f32(f32(a / y) * b),
             'float64 then f32': lambda a, b, y: f32(np.float64(a) * np.float64(b) / np.float64(y))}
    wins = dict.fromkeys(forms, 0); trials = 0
    accs = np.arange(-16000, 16001, dtype=np.int64)
    while trials < 40:
        sa, sb, sy = f32(rng.uniform(0.001, 0.1)), f32(rng.uniform(0.001, 0.1)), f32(rng.uniform(0.03, 3))
        c = {k: f(sa, sb, sy) for k, f in forms.items()}
        if len(set(c.values())) < 2:
            continue
        P = {k: requant(accs, v, 128) for k, v in c.items()}
        diff = np.zeros(len(accs), bool)
        for k in P:
            diff |= P[k] != P['(sa*sb)/sy']
        ok = []
        for t in accs[np.nonzero(diff)[0][:8]]:
            for b in range(1, 256):
                if t % b == 0 and 0 <= t // b + 128 <= 255:
                    ok.append((t // b + 128, b)); break
        if not ok:
            continue
        trials += 1
        A = np.array([[a] for a, b in ok], np.uint8); B = np.array([[b for a, b in ok]], np.uint8)
        y = np.diag(qlmm(A, B, sa, 128, sb, 0, sy, 128)).astype(np.int64)
        acc = np.array([(a - 128) * b for a, b in ok], np.int64)
        for k, v in c.items():
            wins[k] += int((requant(acc, v, 128) == y).all())
    print(f'  scale formula: trials fully matched (of {trials}, each separating the formulas):', wins)
    A = np.arange(256, dtype=np.uint8)[:, None]
    y = qlmm(A, np.array([[1]], np.uint8), 0.5, 100, 1.0, 0, 1.0, 128)[:, 0].astype(np.int64)
    acc = np.arange(256) - 100
    print('  ties acc*0.5 = k+0.5: half-to-even', bool((y == np.clip(np.rint(acc * 0.5) + 128, 0, 255)).all()),
          '| half-away-from-zero', bool((y == np.clip(np.trunc(acc * 0.5 + np.sign(acc) * 0.5) + 128, 0, 255)).all()))
    found = []
    while len(found) < 16:
        s = f32(rng.uniform(0.3, 0.7)); a = int(rng.integers(1, 255))
        if np.rint(f32(f32(a) * s)) != np.rint(np.float64(a) * np.float64(s)):
            found.append((a, s))
    ok32 = ok64 = 0
    for a, s in found:
        y = int(qlmm(np.array([[a]], np.uint8), np.array([[1]], np.uint8), s, 0, 1.0, 0, 1.0, 0)[0, 0])
        ok32 += y == np.rint(f32(f32(a) * s)); ok64 += y == np.rint(np.float64(a) * np.float64(s))
    print(f'  acc*scale: 16 cases where the float32 product and the exact product round differently: '
          f'float32 matches {ok32}, exact matches {ok64}')
    # bias and |acc| > 2^24: QLinearConv 1x1, x == zx so the GEMM part is 0 and acc == bias
    n = h.make_node('QLinearConv', ['x', 'sx', 'zx', 'w', 'sw', 'zw', 'sy', 'zy', 'b'], ['y'], kernel_shape=[1, 1])
    cases = []
    while len(cases) < 32:
        b = int(rng.integers(2 ** 24, 2 ** 30)) | 1
        kf = int(rng.integers(1, 120))
        s = f32((kf + 0.5) / float(f32(b)))
        if np.rint(f32(f32(b) * s)) != np.rint(np.float64(b) * np.float64(s)):
            cases.append((b, s))
    good_f = good_d = 0
    for b, s in cases:
        y = run([n], {'x': np.full((1, 1, 1, 1), 7, np.uint8)}, [('y', 'uint8')],
                {'sx': f32(1), 'zx': np.array(7, np.uint8), 'w': np.full((1, 1, 1, 1), 3, np.int8), 'sw': s,
                 'zw': np.array(0, np.int8), 'sy': f32(1), 'zy': np.array(0, np.uint8), 'b': np.array([b], np.int32)})
        v = int(y.ravel()[0])
        good_f += v == np.rint(f32(f32(b) * s)); good_d += v == np.rint(np.float64(b) * np.float64(s))
    print(f'  QLinearConv acc=bias in (2^24, 2^30), 32 cases where float32(acc) rounding matters: '
          f'float32(acc)*s matches {good_f}, exact acc*s matches {good_d}')
    print()


def section_quantize():
    rng = np.random.default_rng(2)
    print('== Q3: QuantizeLinear ==')

    def div_vs_recip(n):
        xs, ss = [], []
        while len(xs) < n:
            s = f32(rng.uniform(0.001, 1.0)); x0 = f32((int(rng.integers(-100, 100)) + 0.5) * s)
            for d in range(-3, 4):
                x = x0
                for _ in range(abs(d)):
                    x = np.nextafter(x, f32(np.sign(d) * np.inf), dtype=f32)
                if np.rint(f32(x / s)) != np.rint(f32(x * f32(f32(1) / s))):
                    xs.append(x); ss.append(s); break
        return np.array(xs, f32), np.array(ss, f32)
    xs, ss = div_vs_recip(64)
    y = run([h.make_node('QuantizeLinear', ['x', 's', 'z'], ['y'], axis=1)], {'x': xs[None]}, [('y', 'int8')],
            {'s': ss, 'z': np.zeros(64, np.int8)}, ms=False)[0]
    print(f'  per-axis int8, 64 cases where x/s and x*(1/s) round differently: division matches {(y == np.rint(xs / ss)).sum()},'
          f' reciprocal matches {(y == np.rint(xs * (f32(1) / ss))).sum()}')
    y = np.array([run([h.make_node('QuantizeLinear', ['x', 's', 'z'], ['y'])], {'x': xs[i:i + 1]}, [('y', 'uint8')],
                      {'s': ss[i], 'z': np.array(128, np.uint8)}, ms=False)[0] for i in range(64)]).astype(int) - 128
    print(f'  per-tensor uint8 (z=128), same cases: division matches {(y == np.rint(xs / ss)).sum()},'
          f' reciprocal matches {(y == np.rint(xs * (f32(1) / ss))).sum()}')
    for dt, zval in [(np.uint8, 3), (np.int8, -3), (np.uint16, 300), (np.int16, -300)]:
        s = f32(0.0123)
        x = ((rng.integers(-200, 200, 4000).astype(f32) + f32(0.5)) * s).astype(f32)
        y = run([h.make_node('QuantizeLinear', ['x', 's', 'z'], ['y'])], {'x': x}, [('y', dt)],
                {'s': s, 'z': np.array(zval, dt)}, ms=False).astype(np.int64)
        ii = np.iinfo(dt)
        cands = {'x/s f32': np.rint(x / s), 'x*(1/s) f32': np.rint(x * f32(1 / s)),
                 'x/s f64': np.rint(x.astype(np.float64) / np.float64(s))}
        print(f'  {np.dtype(dt).name:6s} z={zval}: near-tie inputs n=4000, mismatches:',
              {k: int((y != np.clip(v.astype(np.int64) + zval, ii.min, ii.max)).sum()) for k, v in cands.items()})
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 1e10, -1e10, np.inf, -np.inf, np.nan, 254.5, 255.5, -3.5], f32)
    print('  x =', x.tolist(), '(scale 1)')
    for dt, z in [(np.uint8, 0), (np.uint8, 10), (np.int8, 0), (np.int8, 5), (np.int16, 0), (np.uint16, 0)]:
        print(f'    {np.dtype(dt).name:6s} z={z:2d} ->', run([h.make_node('QuantizeLinear', ['x', 's', 'z'], ['y'])],
              {'x': x}, [('y', dt)], {'s': f32(1.0), 'z': np.array(z, dt)}, ms=False).tolist())
    # int4 / uint4 (opset 21): read back through DequantizeLinear(scale 1)
    xx = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 6.5, 7.5, 8.5, -8.5, -9, 100, -100, np.nan], f32)
    for tp, z, name in [(TP.INT4, 0, 'int4'), (TP.UINT4, 8, 'uint4')]:
        nodes = [h.make_node('QuantizeLinear', ['x', 's', 'z'], ['q']), h.make_node('DequantizeLinear', ['q', 's', 'z0'], ['y'])]
        g = h.make_graph(nodes, 'g', [h.make_tensor_value_info('x', TP.FLOAT, xx.shape)], [h.make_tensor_value_info('y', TP.FLOAT, None)],
                         [nh.from_array(f32(1.0), 's'), h.make_tensor('z', tp, [], [z]), h.make_tensor('z0', tp, [], [0])])
        m = h.make_model(g, opset_imports=[h.make_opsetid('', 21)]); m.ir_version = 10
        so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        y = ort.InferenceSession(m.SerializeToString(), so, providers=['CPUExecutionProvider']).run(None, {'x': xx})[0]
        print(f'  {name} z={z}: x={xx.tolist()} -> q={y.astype(int).tolist()}')
    print()


def lut_check(label, op, attrs, xz, xs, ys, yz, fn, dt=np.uint8):
    q = np.arange(np.iinfo(dt).min, np.iinfo(dt).max + 1).astype(dt)
    n = h.make_node(op, ['x', 'xs', 'xz', 'ys', 'yz'], ['y'], domain='com.microsoft', **attrs)
    y = run([n], {'x': q}, [('y', dt)], {'xs': f32(xs), 'xz': np.array(xz, dt), 'ys': f32(ys), 'yz': np.array(yz, dt)}).astype(np.int64)
    ii = np.iinfo(dt)
    xf = ((q.astype(np.int64) - xz).astype(f32) * f32(xs)).astype(f32)
    res = {}
    for prec, v in (('f32', fn(xf).astype(f32)), ('f64', fn(xf.astype(np.float64)))):
        pred = np.clip(np.rint(v / (f32(ys) if prec == 'f32' else np.float64(ys))) + yz, ii.min, ii.max).astype(np.int64)
        res[prec] = int((pred != y).sum())
    print(f'  {label}: table entries (of {len(q)}) differing from quantize(f(dequantize(q))): {res}')


def section_elementwise():
    rng = np.random.default_rng(4)
    print('== Q4: QLinearAdd / QLinearMul / pools / concat / LUT ops (exhaustive or random inputs) ==')
    a = np.repeat(np.arange(256), 256).astype(np.uint8); b = np.tile(np.arange(256), 256).astype(np.uint8)
    for op in ('QLinearAdd', 'QLinearMul'):
        for t in range(3):
            sa, sb, sc_ = (f32(v) for v in rng.uniform(0.005, 0.05, 3))
            za, zb, zc = (int(v) for v in rng.integers(0, 256, 3))
            n = h.make_node(op, ['a', 'sa', 'za', 'b', 'sb', 'zb', 'sc', 'zc'], ['y'], domain='com.microsoft')
            y = run([n], {'a': a, 'b': b}, [('y', 'uint8')], {'sa': sa, 'za': np.array(za, np.uint8), 'sb': sb,
                    'zb': np.array(zb, np.uint8), 'sc': sc_, 'zc': np.array(zc, np.uint8)}).astype(np.int64)
            A = a.astype(f32); B = b.astype(f32)
            c = {}
            if op == 'QLinearAdd':
                rA, rB = f32(sa / sc_), f32(sb / sc_)
                c['rA*(a-za) + rB*(b-zb), +zc int'] = np.rint((A - za) * rA + (B - zb) * rB) + zc
                c['fma: rA*a + (rB*b + (zc - (rA*za + rB*zb)))'] = np.rint(
                    (A.astype(np.float64) * rA + (B.astype(np.float64) * rB + f32(f32(zc) - f32(f32(rA * za) + f32(rB * zb))))).astype(f32))
                c['dequant-add-quant: ((a-za)*sa + (b-zb)*sb)/sc'] = np.rint(((A - za) * sa + (B - zb) * sb) / sc_) + zc
            else:
                r = f32(f32(sa * sb) / sc_)
                c['f32((a-za)*(b-zb)) * f32(sa*sb/sc)'] = np.rint(((A - za) * (B - zb)).astype(f32) * r) + zc
                c['dequant-mul-quant'] = np.rint(((A - za) * sa) * ((B - zb) * sb) / sc_) + zc
            print(f'  {op} trial {t}: mismatches of 65536:',
                  {k: int((np.clip(v, 0, 255).astype(np.int64) != y).sum()) for k, v in c.items()})
    # QLinearGlobalAveragePool (NCHW): sum_int - zx*N then MlasRequantizeOutput with scale candidates
    for t in range(3):
        C, HW = 16, int(rng.integers(3, 12))
        x = rng.integers(0, 256, (1, C, HW, HW)).astype(np.uint8)
        xs, ys = f32(rng.uniform(0.01, 0.05)), f32(rng.uniform(0.01, 0.05)); xz, yz = int(rng.integers(0, 256)), int(rng.integers(0, 256))
        n = h.make_node('QLinearGlobalAveragePool', ['x', 'xs', 'xz', 'ys', 'yz'], ['y'], domain='com.microsoft', channels_last=0)
        y = run([n], {'x': x}, [('y', 'uint8')], {'xs': xs, 'xz': np.array(xz, np.uint8), 'ys': ys, 'yz': np.array(yz, np.uint8)}).ravel().astype(np.int64)
        N = HW * HW; acc = x.reshape(C, -1).astype(np.int64).sum(1) - xz * N
        c = {'sx/(sy*N)': f32(xs / f32(ys * f32(N))), '(sx/sy)/N': f32(f32(xs / ys) / f32(N)), 'sx/N/sy': f32(f32(xs / f32(N)) / ys)}
        print(f'  QLinearGlobalAveragePool {HW}x{HW} trial {t}: mismatches of {C}:',
              {k: int((requant(acc, v, yz) != y).sum()) for k, v in c.items()},
              '| float path:', int((np.clip(np.rint(f32(f32(acc.astype(f32) * xs) / f32(N)) / ys) + yz, 0, 255) != y).sum()))
    # QLinearAveragePool
    for pads, cip in (((0, 0, 0, 0), 0), ((1, 1, 1, 1), 0), ((1, 1, 1, 1), 1)):
        x = rng.integers(0, 256, (1, 8, 7, 7)).astype(np.uint8)
        xs, ys = f32(0.037), f32(0.041); xz, yz = 119, 131
        n = h.make_node('QLinearAveragePool', ['x', 'xs', 'xz', 'ys', 'yz'], ['y'], domain='com.microsoft',
                        kernel_shape=[3, 3], pads=list(pads), count_include_pad=cip)
        y = run([n], {'x': x}, [('y', 'uint8')], {'xs': xs, 'xz': np.array(xz, np.uint8), 'ys': ys, 'yz': np.array(yz, np.uint8)}).astype(np.int64)
        xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=-1)
        OH = xp.shape[2] - 2
        S = np.zeros((8, OH, OH), np.int64); CNT = np.zeros((OH, OH), np.int64); Sf = np.zeros((8, OH, OH), f32)
        for i in range(3):
            for j in range(3):
                win = xp[0, :, i:i + OH, j:j + OH]; valid = win >= 0
                S += np.where(valid, win - xz, 0); Sf += np.where(valid, (win - xz).astype(f32) * xs, f32(0)).astype(f32)
                CNT += valid[0]
        if cip:
            CNT[:] = 9
        c = {'float: sum((q-zx)*sx)/cnt/sy': np.rint(f32(f32(Sf / CNT.astype(f32)) / ys)) + yz,
             'int sum * f32(sx/(sy*cnt))': np.rint(S.astype(f32) * (xs / (ys * CNT.astype(f32))).astype(f32)) + yz,
             'int sum * sx / cnt / sy (f32 each)': np.rint(f32(f32(f32(S.astype(f32) * xs) / CNT.astype(f32)) / ys)) + yz}
        print(f'  QLinearAveragePool 3x3 pads={pads[0]} count_include_pad={cip}: mismatches of {y.size}:',
              {k: int((np.clip(v, 0, 255).astype(np.int64) != y[0]).sum()) for k, v in c.items()})
    # QLinearConcat: inputs with other (scale, zp) are requantized: rint(((q-z)*s)/sy)+zy ?
    A = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16); B = A[:, :, ::-1].copy()
    n = h.make_node('QLinearConcat', ['ys', 'yz', 'a', 'as', 'az', 'b', 'bs', 'bz'], ['y'], domain='com.microsoft', axis=1)
    ys, as_, bs_ = f32(0.0371), f32(0.0213), f32(0.0517); yz, az, bz = 120, 77, 201
    y = run([n], {'a': A, 'b': B}, [('y', 'uint8')], {'ys': ys, 'yz': np.array(yz, np.uint8), 'as': as_, 'az': np.array(az, np.uint8),
            'bs': bs_, 'bz': np.array(bz, np.uint8)}).astype(np.int64)
    pa = np.clip(np.rint(f32((A.astype(np.int64) - az).astype(f32) * as_) / ys) + yz, 0, 255)
    pb = np.clip(np.rint(f32((B.astype(np.int64) - bz).astype(f32) * bs_) / ys) + yz, 0, 255)
    pa2 = np.clip(np.rint((A.astype(np.int64) - az).astype(f32) * f32(as_ / ys)) + yz, 0, 255)
    print('  QLinearConcat: mismatches (512): quantize(dequantize) =', int((y[0, 0] != pa[0, 0]).sum() + (y[0, 1] != pb[0, 0]).sum()),
          '| (q-z)*f32(s/sy) =', int((y[0, 0] != pa2[0, 0]).sum()))
    sig = lambda v: 1 / (1 + np.exp(-v))
    for xz, xs, ys, yz in ((128, 0.05, 1 / 256, 0), (100, 0.1, 0.004, 3)):
        lut_check(f'QLinearSigmoid xs={xs} ys={ys}', 'QLinearSigmoid', {}, xz, xs, ys, yz, sig)
    lut_check('QLinearSigmoid int8', 'QLinearSigmoid', {}, 0, 0.06, 1 / 256, -128, sig, np.int8)
    for alpha in (0.1, 0.01, 0.2):
        lut_check(f'QLinearLeakyRelu alpha={alpha}', 'QLinearLeakyRelu', {'alpha': alpha}, 120, 0.05, 0.03, 60,
                  lambda v, a_=alpha: np.where(v >= 0, v, v * (f32(a_) if v.dtype == f32 else a_)))
    print()


def _I(name, arr):
    return nh.from_array(np.asarray(arr), name)


def _qdq(name, s, z, dt=np.uint8):
    return [h.make_node('QuantizeLinear', [name, name + '_s', name + '_z'], [name + '_q']),
            h.make_node('DequantizeLinear', [name + '_q', name + '_s', name + '_z'], [name + '_dq'])], \
        [_I(name + '_s', f32(s)), _I(name + '_z', np.array(z, dt))]


def _model(nodes, inits, inputs, out='y', opset=21):
    g = h.make_graph(nodes, 'g', [h.make_tensor_value_info(n, TP.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info(out, TP.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid('', opset)]); m.ir_version = 10
    return m


def _tail(last, s, z, dt=np.uint8):
    return [h.make_node('QuantizeLinear', [last, 'y_s', 'y_z'], ['y_q']), h.make_node('DequantizeLinear', ['y_q', 'y_s', 'y_z'], ['y'])], \
        [_I('y_s', f32(s)), _I('y_z', np.array(z, dt))]


def conv_model(rng, wdt=np.int8, per_channel=False, wzp=0, bias='int32', act_after=None, act=np.uint8, C=8, M=16, group=1,
               bias_scale_ok=True, yz=None):
    nodes, inits = _qdq('x', 0.02, 128 if act == np.uint8 else 0, act)
    if wdt == 'int4':
        w = rng.integers(-8, 8, (M, C // group, 3, 3))
        inits += [h.make_tensor('w_q', TP.INT4, w.shape, w.ravel().tolist()),
                  h.make_tensor('w_z', TP.INT4, [M] if per_channel else [], [0] * (M if per_channel else 1))]
    else:
        ii = np.iinfo(wdt)
        inits += [_I('w_q', rng.integers(ii.min, ii.max + 1, (M, C // group, 3, 3)).astype(wdt)),
                  _I('w_z', np.full(M, wzp, wdt) if per_channel else np.array(wzp, wdt))]
    ws = rng.uniform(0.001, 0.01, M).astype(f32) if per_channel else f32(0.005)
    inits.append(_I('w_s', ws))
    ax = {'axis': 0} if per_channel else {}
    nodes.append(h.make_node('DequantizeLinear', ['w_q', 'w_s', 'w_z'], ['w'], **ax))
    cin = ['x_dq', 'w']
    if bias == 'int32':
        bs = (f32(0.02) * ws).astype(f32) if bias_scale_ok else (ws * f32(0.5)).astype(f32)
        inits += [_I('b_q', rng.integers(-1000, 1000, M).astype(np.int32)), _I('b_s', bs),
                  _I('b_z', np.zeros(M, np.int32) if per_channel else np.array(0, np.int32))]
        nodes.append(h.make_node('DequantizeLinear', ['b_q', 'b_s', 'b_z'], ['b'], **ax)); cin.append('b')
    elif bias == 'float':
        inits.append(_I('b', rng.normal(0, 0.1, M).astype(f32))); cin.append('b')
    nodes.append(h.make_node('Conv', cin, ['c'], pads=[1] * 4, group=group))
    last = 'c'
    if act_after:
        nodes.append(h.make_node(act_after, ['c'], ['r'])); last = 'r'
    if yz is None:
        yz = 128 if act == np.uint8 else 0
    n2, i2 = _tail(last, 0.05, yz, act)
    return _model(nodes + n2, inits + i2, [('x', [1, C, 6, 6])])


def mm_model(rng, op='MatMul', wdt=np.int8, per_channel=False, bias=True, transB=0, act=np.uint8, wzp=0, act_after=None, yz=None):
    K, N = 16, 8
    nodes, inits = _qdq('x', 0.02, 128 if act == np.uint8 else 0, act)
    ii = np.iinfo(wdt)
    shape = (N, K) if (op == 'Gemm' and transB) else (K, N)
    ws = rng.uniform(0.001, 0.01, N).astype(f32) if per_channel else f32(0.005)
    inits += [_I('w_q', rng.integers(ii.min, ii.max + 1, shape).astype(wdt)), _I('w_s', ws),
              _I('w_z', np.full(N, wzp, wdt) if per_channel else np.array(wzp, wdt))]
    nodes.append(h.make_node('DequantizeLinear', ['w_q', 'w_s', 'w_z'], ['w'],
                             **({'axis': 0 if (op == 'Gemm' and transB) else 1} if per_channel else {})))
    ins = ['x_dq', 'w']
    if bias and op == 'Gemm':
        inits += [_I('b_q', rng.integers(-1000, 1000, N).astype(np.int32)), _I('b_s', (f32(0.02) * ws).astype(f32)),
                  _I('b_z', np.zeros(N, np.int32) if per_channel else np.array(0, np.int32))]
        nodes.append(h.make_node('DequantizeLinear', ['b_q', 'b_s', 'b_z'], ['b'], **({'axis': 0} if per_channel else {})))
        ins.append('b')
    nodes.append(h.make_node(op, ins, ['c'], **({'transB': transB} if op == 'Gemm' else {})))
    last = 'c'
    if act_after:
        nodes.append(h.make_node(act_after, ['c'], ['r'])); last = 'r'
    if yz is None:
        yz = 128 if act == np.uint8 else 0
    n2, i2 = _tail(last, 0.05, yz, act)
    return _model(nodes + n2, inits + i2, [('x', [4, K])])


def unary_model(op, attrs=None, act=np.uint8, extra_inits=(), extra_inputs=(), same=False, yz=None):
    z = 128 if act == np.uint8 else 0
    nodes, inits = _qdq('x', 0.02, z, act)
    nodes.append(h.make_node(op, ['x_dq'] + list(extra_inputs), ['c'], **(attrs or {})))
    n2, i2 = _tail('c', 0.02 if same else 0.03, z if yz is None else yz, act)
    return _model(nodes + n2, inits + list(extra_inits) + i2, [('x', [1, 8, 6, 6])])


def binary_model(op, act=np.uint8, same=False):
    z = 128 if act == np.uint8 else 0
    n1, i1 = _qdq('a', 0.02, z, act); n2, i2 = _qdq('b', 0.02 if same else 0.03, z if same else z - 10, act)
    n3, i3 = _tail('c', 0.02 if same else 0.04, z, act)
    attrs = {'axis': 1} if op == 'Concat' else {}
    return _model(n1 + n2 + [h.make_node(op, ['a_dq', 'b_dq'], ['c'], **attrs)] + n3, i1 + i2 + i3,
                  [('a', [1, 8, 4, 4]), ('b', [1, 8, 4, 4])])


def section_fusion():
    rng = np.random.default_rng(5)
    print('== Q5: QDQ fusion under default options: node types of the optimized graph ==')
    R = lambda: [_I('roi', np.zeros(0, f32)), _I('scales', np.array([1, 1, 2, 2], f32))]
    cases = [
        ('Conv W s8 per-tensor zp0 + bias int32(scale sx*sw)', lambda: conv_model(rng)),
        ('Conv no bias', lambda: conv_model(rng, bias=None)),
        ('Conv float bias (plain initializer)', lambda: conv_model(rng, bias='float')),
        ('Conv bias int32 with scale != sx*sw', lambda: conv_model(rng, bias_scale_ok=False)),
        ('Conv W s8 per-channel', lambda: conv_model(rng, per_channel=True)),
        ('Conv W s8 zp=3', lambda: conv_model(rng, wzp=3)),
        ('Conv W u8 zp=128', lambda: conv_model(rng, wdt=np.uint8, wzp=128)),
        ('Conv x s8, W s8', lambda: conv_model(rng, act=np.int8)),
        ('Conv depthwise group=C', lambda: conv_model(rng, C=16, M=16, group=16)),
        ('Conv W int4 per-channel', lambda: conv_model(rng, wdt='int4', per_channel=True)),
        ('Conv -> Relu -> Q(zp=128)', lambda: conv_model(rng, act_after='Relu')),
        ('Conv -> Relu -> Q(zp=0, u8)', lambda: conv_model(rng, act_after='Relu', yz=0)),
        ('Conv -> Relu -> Q(zp=-128, s8)', lambda: conv_model(rng, act_after='Relu', act=np.int8, yz=-128)),
        ('MatMul W s8 per-tensor', lambda: mm_model(rng)),
        ('MatMul W s8 per-column', lambda: mm_model(rng, per_channel=True)),
        ('MatMul W u8', lambda: mm_model(rng, wdt=np.uint8, wzp=128)),
        ('MatMul x s8 W s8', lambda: mm_model(rng, act=np.int8)),
        ('Gemm W s8 + bias int32', lambda: mm_model(rng, op='Gemm')),
        ('Gemm no bias', lambda: mm_model(rng, op='Gemm', bias=False)),
        ('Gemm transB per-channel + bias', lambda: mm_model(rng, op='Gemm', transB=1, per_channel=True)),
        ('Gemm -> Relu -> Q(zp=128)', lambda: mm_model(rng, op='Gemm', act_after='Relu')),
        ('Gemm -> Relu -> Q(zp=0)', lambda: mm_model(rng, op='Gemm', act_after='Relu', yz=0)),
        ('Add', lambda: binary_model('Add')), ('Add s8', lambda: binary_model('Add', np.int8)),
        ('Mul', lambda: binary_model('Mul')), ('Sub', lambda: binary_model('Sub')),
        ('Concat (different scales)', lambda: binary_model('Concat')), ('Concat (same scales)', lambda: binary_model('Concat', same=True)),
        ('AveragePool 3x3', lambda: unary_model('AveragePool', dict(kernel_shape=[3, 3], pads=[1] * 4))),
        ('GlobalAveragePool', lambda: unary_model('GlobalAveragePool')),
        ('MaxPool (different scale)', lambda: unary_model('MaxPool', dict(kernel_shape=[2, 2], strides=[2, 2]))),
        ('MaxPool (same scale/zp)', lambda: unary_model('MaxPool', dict(kernel_shape=[2, 2], strides=[2, 2]), same=True)),
        ('Relu (different scale)', lambda: unary_model('Relu')),
        ('Relu (same scale, zp 128)', lambda: unary_model('Relu', same=True)),
        ('Relu (Q zp=0 u8)', lambda: unary_model('Relu', same=True, yz=0)),
        ('Sigmoid', lambda: unary_model('Sigmoid', yz=0)), ('Sigmoid s8', lambda: unary_model('Sigmoid', act=np.int8)),
        ('LeakyRelu', lambda: unary_model('LeakyRelu', dict(alpha=0.1))),
        ('Softmax', lambda: unary_model('Softmax', dict(axis=-1), yz=0)),
        ('Tanh', lambda: unary_model('Tanh')), ('HardSwish', lambda: unary_model('HardSwish')),
        ('Resize nearest (same scale)', lambda: unary_model('Resize', dict(mode='nearest'), extra_inits=R(), extra_inputs=['roi', 'scales'], same=True)),
        ('Resize linear (same scale)', lambda: unary_model('Resize', dict(mode='linear'), extra_inits=R(), extra_inputs=['roi', 'scales'], same=True)),
        ('Resize linear (different scale)', lambda: unary_model('Resize', dict(mode='linear'), extra_inits=R(), extra_inputs=['roi', 'scales'])),
        ('Reshape (same scale)', lambda: unary_model('Reshape', extra_inits=[_I('shp', np.array([1, -1], np.int64))], extra_inputs=['shp'], same=True)),
        ('Reshape (different scale)', lambda: unary_model('Reshape', extra_inits=[_I('shp', np.array([1, -1], np.int64))], extra_inputs=['shp'])),
        ('Transpose (same scale)', lambda: unary_model('Transpose', dict(perm=[0, 2, 3, 1]), same=True)),
    ]
    for label, fn in cases:
        try:
            types, om = optimized_node_types(fn())
            extra = ''
            if label.startswith('Conv float bias'):
                q = [n for n in om.graph.node if n.op_type == 'QLinearConv']
                extra = f'  (QLinearConv inputs: {len(q[0].input)})' if q else ''
            print(f'  {label:48s}', types, extra)
        except Exception as e:
            print(f'  {label:48s} ERR', str(e)[:160])
    # float-path check: DQ -> Relu -> Q with different scales equals numpy float32 dequant/relu/quant
    m = unary_model('Relu')
    x = rng.normal(0, 1.5, (1, 8, 6, 6)).astype(f32)
    s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])
    y = s.run(None, {'x': x})[0]
    q = np.clip(np.rint(x / f32(0.02)) + 128, 0, 255)
    d = ((q - 128) * f32(0.02)).astype(f32)
    r = np.maximum(d, 0)
    yq = np.clip(np.rint(r / f32(0.03)) + 128, 0, 255)
    print('  float path DQ->Relu->Q (different scales) vs numpy float32 recipe: max abs diff', float(np.abs(y - ((yq - 128) * f32(0.03)).astype(f32)).max()))
    print()


def tiny_cnn(rng):
    """Conv+Relu, depthwise Conv+Relu, Add residual, GlobalAveragePool, Flatten, Gemm."""
    W = lambda *s: _I(f'W{len(s)}_{"x".join(map(str, s))}', rng.normal(0, 0.3, s).astype(f32))
    inits = [_I('w1', rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f32)), _I('b1', rng.normal(0, 0.1, 8).astype(f32)),
             _I('w2', rng.normal(0, 0.3, (8, 1, 3, 3)).astype(f32)), _I('b2', rng.normal(0, 0.1, 8).astype(f32)),
             _I('w3', rng.normal(0, 0.3, (16, 8, 1, 1)).astype(f32)), _I('b3', rng.normal(0, 0.1, 16).astype(f32)),
             _I('w4', rng.normal(0, 0.3, (16, 16, 3, 3)).astype(f32)), _I('b4', rng.normal(0, 0.1, 16).astype(f32)),
             _I('wf', rng.normal(0, 0.3, (10, 16)).astype(f32)), _I('bf', rng.normal(0, 0.1, 10).astype(f32))]
    nodes = [h.make_node('Conv', ['x', 'w1', 'b1'], ['c1'], pads=[1] * 4), h.make_node('Relu', ['c1'], ['r1']),
             h.make_node('Conv', ['r1', 'w2', 'b2'], ['c2'], pads=[1] * 4, group=8), h.make_node('Relu', ['c2'], ['r2']),
             h.make_node('Conv', ['r2', 'w3', 'b3'], ['c3']),
             h.make_node('Conv', ['c3', 'w4', 'b4'], ['c4'], pads=[1] * 4), h.make_node('Add', ['c3', 'c4'], ['a']),
             h.make_node('Relu', ['a'], ['r4']), h.make_node('GlobalAveragePool', ['r4'], ['g']),
             h.make_node('Flatten', ['g'], ['f']), h.make_node('Gemm', ['f', 'wf', 'bf'], ['y'], transB=1)]
    g = h.make_graph(nodes, 'cnn', [h.make_tensor_value_info('x', TP.FLOAT, [1, 3, 12, 12])],
                     [h.make_tensor_value_info('y', TP.FLOAT, [1, 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid('', 17)]); m.ir_version = 8
    return m


def section_quantize_static():
    print('== Q5b: onnxruntime.quantization.quantize_static on a tiny CNN; what ORT actually runs ==')
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except Exception as e:
        print('  onnxruntime.quantization unavailable:', e); return
    rng = np.random.default_rng(6)
    m = tiny_cnn(rng)
    d = tempfile.mkdtemp()
    fp = os.path.join(d, 'f.onnx'); onnx.save(m, fp)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{'x': rng.normal(0, 1, (1, 3, 12, 12)).astype(f32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)
    xin = rng.normal(0, 1, (1, 3, 12, 12)).astype(f32)
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        for pc in (False, True):
            out = os.path.join(d, f'q_{fmt}_{pc}.onnx')
            try:
                quantize_static(fp, out, Reader(), quant_format=fmt, per_channel=pc, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8)
            except Exception as e:
                print(f'  {fmt} per_channel={pc}: quantize_static ERR', str(e)[:120]); continue
            qm = onnx.load(out)
            types, _ = optimized_node_types(out)
            print(f'  {str(fmt):22s} per_channel={pc!s:5s} file:', dict(collections.Counter(n.op_type for n in qm.graph.node)))
            print(f'  {"":22s} {"":17s} runs:', types)
            so = ort.SessionOptions(); so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            y0 = ort.InferenceSession(out, so, providers=['CPUExecutionProvider']).run(None, {'x': xin})[0]
            y1 = ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(None, {'x': xin})[0]
            print(f'  {"":22s} {"":17s} optimized vs unoptimized output: max abs diff {np.abs(y0 - y1).max():.5g}')
    print()


def section_shufflenet():
    print('== Q6: shufflenet-v2-12-int8 (QOperator) ==')
    if not os.path.exists(SHUFFLENET):
        print('  not found:', SHUFFLENET); return
    m = onnx.load(SHUFFLENET)
    print('  opsets:', [(o.domain, o.version) for o in m.opset_import if o.domain in ('', 'com.microsoft')])
    print('  op types:', dict(collections.Counter((n.domain + '.' if n.domain else '') + n.op_type for n in m.graph.node)))
    init = {i.name: nh.to_array(i) for i in m.graph.initializer}
    kinds = collections.Counter()
    for n in m.graph.node:
        if n.op_type != 'QLinearConv':
            continue
        w = init[n.input[3]]; wz = init[n.input[5]]; xz = init[n.input[2]]
        a = {x.name: h.get_attribute_value(x) for x in n.attribute}
        g = a.get('group', 1); M, Cg = w.shape[:2]
        sym = w.dtype == np.int8 and not wz.any()
        if Cg == 1 and M == g:
            path = 'depthwise (ConvSym depthwise)' if (sym and g % 16 == 0) else 'depthwise (MlasConvDepthwise)'
            sat = 'exact'
        else:
            k = int(np.prod(w.shape[2:]))
            symconv = sym and g == 1 and Cg % 4 == 0 and M % 8 == 0 and M >= 16
            path = ('ConvSym' if symconv else ('direct GEMM (1x1)' if k == 1 and not any(a.get('pads', [0])) and
                    all(s == 1 for s in a.get('strides', [1])) else 'im2col GEMM')) + f' K={Cg * k}'
            sat = 'pair-saturating (u8 x s8)' if (xz.dtype == np.uint8 and w.dtype == np.int8) else 'exact'
        kinds[(path.split(' K=')[0], sat)] += 1
        print(f'  {n.name[:28]:28s} x {xz.dtype}(zp {int(xz)}) W {w.dtype}{list(w.shape)} w_scale[{init[n.input[4]].size}] '
              f'w_zp {"all 0" if not wz.any() else "nonzero"} group {g} k {a.get("kernel_shape")} s {a.get("strides")} -> {path}, {sat}')
    print('  summary:', dict(kinds))
    for n in m.graph.node:
        if n.op_type in ('QLinearMatMul', 'QLinearAdd', 'ReduceMean', 'MaxPool'):
            print(f'  {n.op_type}: inputs', [(i, str(init[i].dtype) + str(list(init[i].shape))) if i in init else i for i in n.input][:8])
    types, _ = optimized_node_types(SHUFFLENET)
    print('  optimized graph op types:', dict(collections.Counter(types)))
    print()


SECTIONS = {'env': section_env, 'gemm': section_gemm, 'conv': section_conv, 'requant': section_requant,
            'quantize': section_quantize, 'elementwise': section_elementwise, 'fusion': section_fusion,
            'quantize_static': section_quantize_static, 'shufflenet': section_shufflenet}

if __name__ == '__main__':
    names = sys.argv[1:] or list(SECTIONS)
    if 'env' not in names:
        names = ['env'] + names
    for name in names:
        SECTIONS[name]()
