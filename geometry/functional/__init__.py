"""Stateless math shared by every representation: one copy of each formula (docs/ARCHITECTURE.md).

sh.py (real spherical harmonics), frequency.py (positional encoding), mlp.py (the small MLP builder),
rays.py (ray–sphere / ray–box intervals), compositing.py (premultiplied colour over a background),
footprint.py (enumerating the integer cells of many boxes at once), regularizers.py (opacity losses),
marching_tets.py (differentiable marching tetrahedra: SDF on a tet grid → triangle mesh, DMTet).
"""
