"""Synthetic dataset in exactly the DeepFashion In-shop layout (what ``make run`` trains on offline).

Modules: :mod:`~xmdpt.synth.figure` (appearance, 3-D pose), :mod:`~xmdpt.synth.draw` (2-D shapes,
prints, compositing), :mod:`~xmdpt.synth.render` (one view: image + keypoints),
:mod:`~xmdpt.synth.dataset` (the files).

Each identity is a clothed, person-like figure with its own appearance (skin tone, hair colour and
length, body proportions, a top and a bottom garment with colour + pattern chosen by the category),
photographed in several views (``01_1_front``, ``01_2_side``, ``01_3_back``, ``01_4_full``,
``01_7_additional``), each with a different pose. A view is made by

1. sampling joint angles (shoulder abduction/flexion, elbow, hip, knee, torso lean/twist, head yaw);
2. forward kinematics -> 3-D joints (x to the person's left, y up, z forward);
3. rotating by the view azimuth (front 0, side ~ +-90, back 180, others random) and projecting
   orthographically into a 256x176 (H x W) image;
4. drawing body parts (torso box, capsule limbs, head with hair, shoes) far-to-near (painter's
   algorithm on depth), with anti-aliased edges, outlines and pattern textures.

The 18 COCO keypoints written to the annotation files are the projected joints, so they land on the
drawn figure. Occluded points are missing (-1): face points facing away from the camera, far-side
joints hidden behind the torso, and ~5% dropped at random (as a real detector misses some).

Files written under ``out`` (PAPER.md §2):

- ``img/{MEN,WOMEN}/{Category}/id_XXXXXXXX/01_V_view.jpg`` — 256x176 JPEGs;
- PATN/GFLA: ``fasion-resize-pairs-{train,test}.csv`` (``,from,to``: index, source, target fashion
  names), ``fasion-resize-annotation-{train,test}.csv`` (``name:keypoints_y:keypoints_x``),
  ``train.lst`` / ``test.lst`` (one fashion name per line);
- PIDM/X-MDPT: ``{train,test}_pairs.txt`` (target path, then candidate source paths) and
  ``pose/.../01_V_view.txt`` (18x2 ``x y`` rows in the 40-px-border 256x256 frame).

Same seed -> byte-identical files (fixed JPEG quality, no metadata, sorted writes).
"""


from xmdpt.synth.dataset import write_synthetic_dataset
from xmdpt.synth.figure import CATEGORIES, IMAGE_HW, VIEWS
from xmdpt.synth.render import SynthView, render_identity_views

__all__ = ["IMAGE_HW", "VIEWS", "CATEGORIES", "SynthView", "write_synthetic_dataset", "render_identity_views"]
