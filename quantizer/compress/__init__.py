"""Compression before quantization: spatial SVD, weight SVD, channel pruning with reconstruction, a
cost model, greedy per-layer ratio selection (generic over options, also for mixed precision), and a
short fine-tuning loop. Works on float ``nn.Module``s; the results stay ``nn.Module``s that
``hwsim.simulate`` captures."""
from .cost import LayerCost, layer_costs, model_cost, total_cost
from .finetune import finetune
from .greedy import (Selection, Table, build_table, compress, compression_options, greedy_select,
                     select_ratios)
from .pruning import prune_channels, pruning_path
from .svd import rank_for_ratio, spatial_svd, weight_svd

__all__ = ["LayerCost", "layer_costs", "model_cost", "total_cost", "finetune", "Selection", "Table",
           "build_table", "compress", "compression_options", "greedy_select", "select_ratios",
           "prune_channels", "pruning_path", "rank_for_ratio", "spatial_svd", "weight_svd"]
