"""`bastion bench quantization`: what int8/int4 weights cost in accuracy against bf16."""
