"""Research experiments on the toy world: seeds x arms under the gold-vs-proxy protocol.

Not part of the `ray_rlhf` package: the product's commands live in `ray_rlhf/loops/`.
`python -m experiments.run <name>` runs `experiments/configs/<name>.yaml`.
"""
