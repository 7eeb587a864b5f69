"""File input and output: MRC micrographs, STAR tables, coordinate formats, CryoSPARC .cs."""
