#!/usr/bin/env bash
# The README's highlight table, remeasured: every row is one `moe` command on the trained fixture, every perplexity
# measured in ONE evaluation setting (the held-out text, windows of 128 tokens, the first 16,384 tokens: the setting
# of `npm run example`), against one unpruned baseline. Prints the markdown rows with the command beside each.
#   bash bench/readme-table.sh            (after `npm run build`; about 10-20 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
M=test/fixtures/tiny-mixtral
C=test/fixtures/text/calib.txt
H=test/fixtures/text/heldout.txt
EVAL="--data $H --seq-len 128 --max-tokens 16384"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/moe-readme-XXXXXX")
trap 'rm -rf "$OUT"' EXIT

moe() { node bin/moe.js "$@"; }
# perplexity of DIR in the one setting
ppl() { moe eval --model "$1" $EVAL --json 2>/dev/null | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).perplexity.toFixed(2)))'; }
# a field of a report file
field() { node -e "const r=require(process.argv[1]);console.log(eval('r.'+process.argv[2]))" "$(realpath "$1")" "$2"; }

BASE=$(ppl $M)
echo "| pipeline | command (then \`moe eval --model OUT $EVAL\`) | held-out perplexity (unpruned, unquantized: $BASE) |"
echo "|---|---|---|"
row() { # row PIPELINE NAME ARGS...: run `moe ARGS --out OUT/NAME`, evaluate it
  local pipeline=$1 name=$2
  shift 2
  moe "$@" --out "$OUT/$name" --quiet >/dev/null
  echo "| $pipeline | \`moe $*\` | $(ppl "$OUT/$name") |"
}

row quantize q25 quantize --model $M --calib $C --bits 2.5
echo "| | (true expert bits of that output: $(field "$OUT/q25/moe-quantize-report.json" 'bpw.experts.toFixed(3)')) | |"
row quantize q25rtn quantize --model $M --calib $C --bits 2.5 --method rtn
row "quantize (vLLM)" ct quantize --model $M --calib $C --format compressed-tensors --bits 5.13
echo "| | (true expert bits of that output: $(field "$OUT/ct/moe-quantize-report.json" 'bpw.experts.toFixed(3)')) | |"
row quantize q3 quantize --model $M --calib $C --bits 16 --candidates 3
echo "| | (true expert bits of that output: $(field "$OUT/q3/moe-quantize-report.json" 'bpw.experts.toFixed(3)')) | |"
row prune reap6 prune --model $M --calib $C --keep 6 --method reap
row prune reap4 prune --model $M --calib $C --keep 4 --method reap
row prune freq4 prune --model $M --calib $C --keep 4 --method frequency
RANDOM_PPL=()
for s in 1 2 3 4 5; do
  moe prune --model $M --keep 4 --method random --seed $s --out "$OUT/rand$s" --quiet >/dev/null
  RANDOM_PPL+=("$(ppl "$OUT/rand$s")")
  rm -rf "$OUT/rand$s"
done
echo "| prune | \`moe prune --model $M --keep 4 --method random --seed 1..5\` | $(node -e 'const v=process.argv.slice(1).map(Number);const m=v.reduce((a,b)=>a+b)/v.length;const sd=Math.sqrt(v.reduce((a,b)=>a+(b-m)**2,0)/(v.length-1));console.log(m.toFixed(2)+" ± "+sd.toFixed(2)+" (mean ± sd of 5 seeds)")' "${RANDOM_PPL[@]}") |"
row merge merge6 merge --model $M --calib $C --groups 6
row merge merge4 merge --model $M --calib $C --groups 4
row decompose dec60 decompose --model $M --calib $C --ratio 0.6
row decompose dec60u decompose --model $M --calib $C --ratio 0.6 --uniform
SKIP=$(moe eval --model $M $EVAL --skip auto --calib $C --json 2>/dev/null | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);console.log(r.perplexity.toFixed(2)+" with "+(100*(r.skip?.savedFraction??NaN)).toFixed(1)+"% of expert calls skipped")})')
echo "| eval --skip | \`moe eval --model $M $EVAL --skip auto --calib $C\` | $SKIP |"
