"""Generated from protos/asr/v1/asr.proto by scripts/gen_protos.sh; do not edit."""
