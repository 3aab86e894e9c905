from absvit.data.readers import ClassFolder, DatasetError, imagenet_c_folders, label_space

__all__ = ["ClassFolder", "DatasetError", "imagenet_c_folders", "label_space"]
