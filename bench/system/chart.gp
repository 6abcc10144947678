# chart.gp: the bar chart of `tapyard bench --report DIR` (DIR/chart.png).
#   gnuplot -e "datafile='chart.tsv'; outfile='chart.png'; npaths=4; present='1 1 1 1 0 1'; subtitle='...'" chart.gp
# chart.tsv, no header, one line per measured data path, tab-separated:
#   path  tcp1_gbps  tcp4_gbps  udp64_kpps  ping_p50_us  pingpong_p50_us  cpu_s_per_gb
# NaN where a figure was not measured (that bar is left out); `present` says
# which of the six figures has at least one value (a panel without any says so).

if (!exists("datafile")) datafile = 'chart.tsv'
if (!exists("outfile")) outfile = 'chart.png'
if (!exists("subtitle")) subtitle = ''
if (!exists("npaths")) npaths = 1
if (!exists("present")) present = '1 1 1 1 1 1'
if (!exists("ping_title")) ping_title = "ping every 2 ms, RTT median (µs, lower is better)"

if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 1500,900 font "sans,10"
} else {
  set terminal png size 1500,900
}
set output outfile
set datafile separator "\t"
set datafile missing "NaN"
set style fill solid 0.75 border -1
set boxwidth 0.7
set grid ytics
set key off
set tmargin 3
set bmargin 5
set lmargin 8
set rmargin 2

array titles[6] = ["TCP, 1 stream (Gbit/s, higher is better)", \
                   "TCP, 4 streams (Gbit/s, higher is better)", \
                   "64-byte UDP frames received (kpps, higher is better)", \
                   ping_title, \
                   "UDP 64 B ping-pong, RTT median (µs, lower is better)", \
                   "switch CPU per GB, TCP 1 stream (s/GB, lower is better)"]
array formats[6] = ["%.2f", "%.2f", "%.0f", "%.0f", "%.0f", "%.2f"]
array colors[6] = ["#3b75af", "#3b75af", "#519e3e", "#ef8636", "#ef8636", "#8d69b8"]

set multiplot layout 2,3 title "tapyard bench: ".subtitle
do for [i = 1:6] {
  set title titles[i]
  c = i + 1
  if (word(present, i) eq "1") {
    set xrange [-0.6:npaths - 0.4]
    set yrange [0:*]
    set offsets 0, 0, graph 0.1, 0
    set xtics rotate by 30 right nomirror
    set ytics
    plot datafile using 0:c:xtic(1) with boxes lc rgb colors[i], \
         '' using 0:c:(sprintf(formats[i], column(c))) with labels offset 0,0.7 font ",8"
  } else {
    set xrange [0:1]
    set yrange [0:1]
    set offsets 0, 0, 0, 0
    unset xtics
    unset ytics
    set label 1 "not measured" at graph 0.5, 0.5 center
    plot NaN notitle
    unset label 1
  }
}
unset multiplot
