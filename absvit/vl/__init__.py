"""Vision-and-language fine-tuning (appendix section 4): the ImageNet-pretrained ViT / AbSViT as the visual encoder of
a METER-style model, with the question or caption as AbSViT's top-down prior (VQAv2, Flickr30k retrieval)."""
