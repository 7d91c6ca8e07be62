"""DMTet (Shen et al. 2021): a signed distance and a bounded deformation on a tetrahedral grid, meshed by
differentiable marching tetrahedra (geometry/functional/marching_tets.py). tet_grid.py builds the grid."""
