"""Networks: ResNet variants, MoCo and CMC."""
