"""`bastion bench throughput`: bastion's offline engine beside transformers, in ABBA pairs."""
