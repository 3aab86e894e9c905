"""Vision-and-language fine-tuning (appendix section 4): ViT or AbSViT as the visual encoder of a METER-style
model, with the question or caption as AbSViT's top-down prior; VQAv2 and Flickr30k retrieval."""
