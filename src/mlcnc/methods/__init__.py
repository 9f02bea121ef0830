"""Methods a config picks by name: one module per method family, each holding its options
sections, its builder and its registration (``mlcnc.methods.registry``).

The modules are imported below in the paper's Table 1 order (baselines, then MLC-NC and its
ablations), which is the registration order ``table_order`` reports. ``method_table()``
lists the registered methods (name, display name, sampler, source); samplers follow the
benchmark's setting for each baseline, and ``method.sampler`` overrides any of them.
Adding a loss-only method is one module here (options, criterion factory, ``register_linear``)
plus its loss in ``mlcnc.losses``; import it below at its place in the table.
"""

from mlcnc.methods.registry import (
    METHODS,
    Builder,
    BuildRequest,
    Method,
    MethodConfig,
    MethodRecord,
    NoOptions,
    SamplerKind,
    build_method,
    check_input_size,
    check_method,
    create_model,
    display_name,
    method_defaults,
    method_table,
    needs_num_samples,
    register_method,
    resolve_options,
    table_order,
)

# isort: off
# Registration order is the paper's Table 1 order.
from mlcnc.methods import erm, rw, focal, cb_focal, ldam, mlgcn, oltr, bbn, asl
from mlcnc.methods import db, urs, mfm, two_way, mlcnc

# Vision-language methods (CLIP towers through open_clip), after Table 1.
from mlcnc.methods import lmclip, mlcnc_clip, lmpt

# isort: on
from mlcnc.methods.asl import AsymmetricOptions
from mlcnc.methods.bbn import BBNModelOptions
from mlcnc.methods.cb_focal import ClassBalancedFocalOptions
from mlcnc.methods.db import DBFocalOptions, DBOptions
from mlcnc.methods.focal import FocalOptions
from mlcnc.methods.ldam import LDAMDRWOptions, LDAMOptions
from mlcnc.methods.linear import CosineModelOptions, LinearModelOptions, register_linear
from mlcnc.methods.lmclip import LMCLIPLossOptions, LMCLIPModelOptions
from mlcnc.methods.lmpt import LMPTLossOptions, LMPTModelOptions
from mlcnc.methods.mfm import MFMOptions
from mlcnc.methods.mlcnc import MLCNCLossOptions, MLCNCModelOptions
from mlcnc.methods.mlgcn import MLGCNModelOptions
from mlcnc.methods.oltr import OLTRLossOptions, OLTRModelOptions
from mlcnc.methods.rw import ReweightOptions
from mlcnc.methods.two_way import TwoWayOptions
from mlcnc.methods.urs import URSLossOptions, URSModelOptions

__all__ = [
    "METHODS",
    "AsymmetricOptions",
    "BBNModelOptions",
    "BuildRequest",
    "Builder",
    "ClassBalancedFocalOptions",
    "CosineModelOptions",
    "DBFocalOptions",
    "DBOptions",
    "FocalOptions",
    "LDAMDRWOptions",
    "LDAMOptions",
    "LMCLIPLossOptions",
    "LMCLIPModelOptions",
    "LMPTLossOptions",
    "LMPTModelOptions",
    "LinearModelOptions",
    "MFMOptions",
    "MLCNCLossOptions",
    "MLCNCModelOptions",
    "MLGCNModelOptions",
    "Method",
    "MethodConfig",
    "MethodRecord",
    "NoOptions",
    "OLTRLossOptions",
    "OLTRModelOptions",
    "ReweightOptions",
    "SamplerKind",
    "TwoWayOptions",
    "URSLossOptions",
    "URSModelOptions",
    "asl",
    "bbn",
    "build_method",
    "cb_focal",
    "check_input_size",
    "check_method",
    "create_model",
    "db",
    "display_name",
    "erm",
    "focal",
    "ldam",
    "lmclip",
    "lmpt",
    "method_defaults",
    "method_table",
    "mfm",
    "mlcnc",
    "mlcnc_clip",
    "mlgcn",
    "needs_num_samples",
    "oltr",
    "register_linear",
    "register_method",
    "resolve_options",
    "rw",
    "table_order",
    "two_way",
    "urs",
]
