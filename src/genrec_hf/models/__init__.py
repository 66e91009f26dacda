"""Model families of genrec_hf; each folder is the closure of files shipped with its checkpoints."""
