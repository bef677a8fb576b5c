"""Local training parts shared by clients and server: the loop, weights, costs, distillation losses."""
