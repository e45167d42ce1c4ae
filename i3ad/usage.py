"""The `i3ad` command's list of subcommands, shared by the light top level (`i3ad.cli`) and `i3ad.commands`."""

DESCRIPTION = "The `i3ad` command: make-data, train, detect, calibrate."
# subcommand -> one-line help
COMMANDS = {
    "make-data": "write the built-in synthetic dataset in the MVTec AD layout",
    "train": "train an inpainter (i3ad) or an autoencoder baseline on train/good",
    "detect": "score a split of a category's test images (REPORT.json) or a folder of new images",
    "calibrate": "pick U by the paper's rule on training normals; saved into the model folder",
}
