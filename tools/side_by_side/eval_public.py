"""The public evaluation trainer (MTT's utils.evaluate_synset, unmodified) on n synthetic Fashion-MNIST-sized
images, for the evaluation row of the side-by-side in docs/benchmarks.md. Run through run_public.py,
which prints each training epoch's seconds (TIMING epoch_train):

  python run_public.py $P/mtt /abs/path/tools/side_by_side/eval_public.py --n=100 --epochs=20 --data_path=$P/data

Recipe of the public distill.py's evaluation: ConvNet-3 width 128, SGD lr 0.01 (its lr_net starts at
lr_teacher), momentum 0.9, weight decay 5e-4, batch 256, DSA, the learning rate ×0.1 after half the
epochs, one test pass at the end. The images are N(0, 1), labels n / 10 per class.
"""
import argparse

import torch
import utils  # the public utils.py, patched by run_public.py

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=100)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--data_path", required=True)
flags = parser.parse_args()

args = argparse.Namespace(
    device="cpu", dataset="FashionMNIST", zca=False, lr_net=0.01, epoch_eval_train=flags.epochs,
    batch_train=256, dsa=True, dsa_strategy="color_crop_cutout_flip_scale_rotate", dsa_param=utils.ParamDiffAug(),
    dc_aug_param=None, im_size=(28, 28))
testloader = utils.get_dataset("FashionMNIST", flags.data_path, 256, args=args)[8]
torch.manual_seed(0)
images = torch.randn(flags.n, 1, 28, 28)
labels = torch.arange(10).repeat_interleave(flags.n // 10)
net = utils.get_network("ConvNet", 1, 10, (28, 28))
utils.evaluate_synset(0, net, images, labels, testloader, args)
