// Hover a run anywhere (legend, table row, curve, point): it stands out in every chart.
// Click a column head: sort the table. `data-ready` tells a headless check the script ran.
(function(){
  var marks=document.querySelectorAll('[data-run]');
  function focus(run){
    document.body.classList.toggle('focus',!!run);
    marks.forEach(function(el){el.classList.toggle('hl',!!run&&el.getAttribute('data-run')===run);});
  }
  marks.forEach(function(el){
    el.addEventListener('mouseenter',function(){focus(el.getAttribute('data-run'));});
    el.addEventListener('mouseleave',function(){focus(null);});
  });
  var table=document.getElementById('run-table');
  if(table){table.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      var dir=th.getAttribute('data-dir')==='asc'?-1:1;th.setAttribute('data-dir',dir>0?'asc':'desc');
      function val(r){var c=r.cells[i],s=c.getAttribute('data-sort');var v=s!==null?s:c.textContent;
        var n=parseFloat(v);return isNaN(n)||!/^[-+0-9.eE]+$/.test(v)?v:n;}
      rows.sort(function(a,b){var x=val(a),y=val(b);return (x>y?1:x<y?-1:0)*dir;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });}
  if(table){
    // Pinned columns stick at the sum of the widths before them.
    var heads=table.tHead.rows[0].cells,left=0;
    for(var c=0;c<heads.length&&heads[c].classList.contains('pin');c++){
      var cells=table.querySelectorAll('tr > :nth-child('+(c+1)+')');
      cells.forEach(function(cell){cell.style.left=left+'px';});
      left+=heads[c].getBoundingClientRect().width;
    }
    // The columns in view without scrolling: a headless check reads them (data-visible-columns).
    var box=table.parentNode.getBoundingClientRect(),shown=[];
    Array.prototype.forEach.call(heads,function(th){
      var r=th.getBoundingClientRect();if(r.right<=Math.min(box.right,window.innerWidth)+1)shown.push(th.textContent);
    });
    table.setAttribute('data-visible-columns',shown.join('\t'));
  }
  document.documentElement.setAttribute('data-ready','1');
})();
