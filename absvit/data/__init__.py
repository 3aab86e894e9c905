"""Datasets: the embedded generator, ImageNet-C shards, and readers for the published layouts."""

# The robustness suites, each read from its own root folder (FGSM and PGD attack the clean val images).
SUITES = ("clean", "imagenet-c", "imagenet-a", "imagenet-r", "imagenet-sketch", "fgsm", "pgd")
ATTACK_SUITES = ("fgsm", "pgd")

# What each configured dataset root must hold (config errors and the README say the same).
LAYOUTS = {
    "imagenet/train": "ImageNet's train/<wnid>/*.JPEG (1000 class folders)",
    "imagenet/val": "ImageNet's val/<wnid>/*.JPEG (the 50k val images sorted into class folders)",
    "imagenet_c": "<corruption>/<1-5>/<wnid>/*.JPEG, or grouped <noise|blur|weather|digital>/<corruption>/<1-5>/<wnid>/",
    "imagenet_a": "<wnid>/*.jpg for the 200 ImageNet-A classes",
    "imagenet_r": "<wnid>/*.jpg for the 200 ImageNet-R classes",
    "imagenet_sketch": "<wnid>/*.JPEG for all 1000 classes (the release's sketch/ folder)",
    "voc": "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}",
    "cityscapes": "leftImg8bit/{train,val}/<city>/ and gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png",
    "ade20k": "ADEChallengeData2016/{images,annotations}/{training,validation}/",
    "scenes": "a folder with manifest.csv (image, object, class_index[, mask]) and the files it names",
    "checkpoint": "a checkpoint file (official layout with 'model', or absvit pretrain's model.pth)",
    "resnet_weights": "timm ImageNet weights (.safetensors or .pth state dict)",
    "vqa": "{train2014,val2014}/COCO_<split>_<12-digit id>.jpg, v2_OpenEnded_mscoco_<split>_questions.json, "
           "v2_mscoco_<split>_annotations.json",
    "flickr30k": "dataset_flickr30k.json (the Karpathy split) and flickr30k-images/*.jpg",
    "text_encoder": "a folder saved by transformers' save_pretrained (e.g. roberta-base: config.json, tokenizer, weights)",
    "figure5": "a CSV with question_id, question, image, mask, class_index (paths relative to it)",
}
